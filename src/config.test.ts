import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadConfig, SETTINGS, setting } from './config.js';

function sources(dir: string): string[] {
  return readdirSync(dir).flatMap((f) => {
    const p = join(dir, f);
    if (statSync(p).isDirectory()) return sources(p);
    return p.endsWith('.ts') && !p.endsWith('.test.ts') ? [p] : [];
  });
}

/** Issue 10: every environment variable the code reads is declared, validated up front and documented. */
describe('configuration', () => {
  const src = new URL('.', import.meta.url).pathname;
  const docs = readFileSync(new URL('../docs/configuration.md', import.meta.url), 'utf8');
  const config = readFileSync(new URL('./config.ts', import.meta.url), 'utf8');

  it('every variable the code reads is documented in docs/configuration.md', () => {
    const read = new Set<string>();
    for (const f of sources(src)) {
      const text = readFileSync(f, 'utf8');
      for (const m of text.matchAll(/process\.env\.([A-Z_][A-Z0-9_]*)/g)) read.add(m[1]!);
      for (const m of text.matchAll(/setting\('([A-Z_][A-Z0-9_]*)'/g)) read.add(m[1]!);
    }
    for (const m of config.matchAll(/^\s+(?:CAIRN_[A-Z_]+|DATABASE_URL): '/gm))
      read.add(m[0].trim().split(':')[0]!);
    // Read by the generated wrapper inside the sandbox, not by Cairn (the sandbox's own /out).
    read.delete('CAIRN_CHECK');
    read.delete('CAIRN_OUT_DIR');
    expect(read.size).toBeGreaterThan(30);
    for (const name of read) expect(docs, `${name} is documented`).toContain(`\`${name}\``);
    for (const name of Object.keys(SETTINGS)) expect(docs, `${name} is documented`).toContain(`\`${name}\``);
  });

  it('the sandbox and build settings are read through the declared schema (no raw process.env)', () => {
    const raw = sources(src)
      .filter((f) => !f.endsWith('config.ts'))
      .flatMap((f) =>
        [...readFileSync(f, 'utf8').matchAll(/process\.env\.(CAIRN_[A-Z0-9_]+)/g)].map(
          (m) => `${f}: ${m[1]}`,
        ),
      )
      .filter((x) => !/CAIRN_(CHECK|OUT_DIR|URL|TOKEN|CIRCLE|PORT)\b/.test(x)); // the sandbox wrapper; the CLI client
    expect(raw).toEqual([]);
  });

  it('a bad value fails at start with INVALID_CONFIG naming it, instead of being ignored', () => {
    for (const [name, value] of [
      ['CAIRN_SANDBOX_STANDBY', 'lots'],
      ['CAIRN_SANDBOX_STANDBY', '65'],
      ['CAIRN_CGROUPS', 'maybe'],
      ['CAIRN_GO_CACHE_ENTRIES', '0'],
      ['CAIRN_LOG_LEVEL', 'loud'],
    ] as [string, string][]) {
      expect(() => loadConfig({}, { [name]: value })).toThrow(new RegExp(`INVALID_CONFIG|${name}`));
      try {
        loadConfig({}, { [name]: value });
      } catch (e: any) {
        expect(e.code).toBe('INVALID_CONFIG');
        expect(e.message).toContain(name);
      }
    }
    expect(setting('CAIRN_SANDBOX_STANDBY', { CAIRN_SANDBOX_STANDBY: '3' })).toBe(3);
    expect(setting('CAIRN_CGROUPS', { CAIRN_CGROUPS: '0' })).toBe(false);
    expect(setting('CAIRN_CGROUPS', {})).toBe(true);
  });
});
