import pino from 'pino';
import { setting } from '../config.js';

export type Logger = pino.Logger;

/** One structured logger for the process; CAIRN_LOG_LEVEL picks the level (tests use `silent`). */
export function createLogger(level: string = setting('CAIRN_LOG_LEVEL')): Logger {
  return pino({ level, base: { pid: process.pid } });
}

export const silentLogger: Logger = pino({ level: 'silent' });
