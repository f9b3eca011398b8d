import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { setting } from '../config.js';

let goRoot: string | undefined;

/** GOROOT of the installed Go toolchain (read-only inside build sandboxes). */
export function goRootDir(): string {
  if (goRoot) return goRoot;
  const candidates = [setting('CAIRN_GOROOT'), '/usr/local/go', '/usr/lib/go'].filter(Boolean) as string[];
  for (const c of candidates) if (existsSync(`${c}/bin/go`)) return (goRoot = c);
  goRoot = execFileSync('go', ['env', 'GOROOT'], { encoding: 'utf8' }).trim();
  return goRoot;
}

export function goBinary(): string {
  return `${goRootDir()}/bin/go`;
}
