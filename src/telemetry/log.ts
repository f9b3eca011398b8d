import pino from 'pino';

export type Logger = pino.Logger;

/** One structured logger for the process; CAIRN_LOG_LEVEL picks the level (tests use `silent`). */
export function createLogger(level = process.env.CAIRN_LOG_LEVEL ?? 'info'): Logger {
  return pino({ level, base: { pid: process.pid } });
}

export const silentLogger: Logger = pino({ level: 'silent' });
