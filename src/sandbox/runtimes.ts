import { thrown } from '../core/errors.js';
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, realpathSync } from 'node:fs';
import { join } from 'node:path';
import type { Bind } from './runner.js';
import { setting } from '../config.js';

export interface Runtime {
  name: 'python' | 'node';
  /** Path of the interpreter inside the sandbox. */
  path: string;
  version: string;
  /** The interpreter, its standard library and exactly the shared libraries they load. */
  binds: Bind[];
  env: Record<string, string>;
}

/** Shared libraries a set of ELF files needs, from ldd, as binds at the paths the loader asks for. */
/** Shared libraries of ELF files, from ldd, bound at the paths the loader asks for. */
export function libraryBinds(files: string[]): Bind[] {
  const seen = new Map<string, string>();
  let out = '';
  try {
    // One ldd over every file (it prints a section per file); static files just say so.
    out = execFileSync('ldd', files, {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
      maxBuffer: 16 * 1024 * 1024,
    });
  } catch (caught) {
    const e = thrown(caught);
    out = String(e?.stdout ?? ''); // ldd exits non-zero when some file is not dynamic
  }
  for (const line of out.split('\n')) {
    const m = /=>\s+(\/\S+)/.exec(line) ?? /^\s+(\/\S+)\s+\(/.exec(line);
    if (m && !seen.has(m[1]!)) seen.set(m[1]!, realpathSync(m[1]!));
  }
  return [...seen.entries()].map(([dest, src]) => ({ src, dest }));
}

let python: Runtime | undefined;
let node: Runtime | undefined;

export function pythonRuntime(): Runtime {
  if (python) return python;
  const bin = realpathSync(setting('CAIRN_PYTHON'));
  const version = execFileSync(bin, ['-c', 'import sys; print("%d.%d.%d" % sys.version_info[:3])'], {
    encoding: 'utf8',
  }).trim();
  const minor = version.split('.').slice(0, 2).join('.');
  const stdlib = `/usr/lib/python${minor}`;
  if (!existsSync(stdlib)) throw new Error(`Python standard library not found at ${stdlib}`);
  const dynload = join(stdlib, 'lib-dynload');
  const exts = existsSync(dynload)
    ? readdirSync(dynload)
        .filter((f) => f.endsWith('.so'))
        .map((f) => join(dynload, f))
    : [];
  python = {
    name: 'python',
    path: '/usr/bin/python3',
    version,
    binds: [
      { src: bin, dest: '/usr/bin/python3' },
      { src: stdlib, dest: stdlib },
      ...libraryBinds([bin, ...exts]),
    ],
    env: { PYTHONDONTWRITEBYTECODE: '1', PYTHONUNBUFFERED: '1', LANG: 'C.UTF-8' },
  };
  return python;
}

export function nodeRuntime(): Runtime {
  if (node) return node;
  const bin = realpathSync(setting('CAIRN_NODE') ?? process.execPath);
  node = {
    name: 'node',
    path: '/usr/bin/node',
    version: process.version,
    binds: [{ src: bin, dest: '/usr/bin/node' }, ...libraryBinds([bin])],
    env: { LANG: 'C.UTF-8' },
  };
  return node;
}
