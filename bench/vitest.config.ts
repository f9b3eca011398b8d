import { defineConfig } from 'vitest/config';

/** Benchmarks reuse the test harness (a throwaway PostgreSQL) but run one file at a time. */
export default defineConfig({
  test: {
    root: new URL('..', import.meta.url).pathname,
    globalSetup: ['./test/global-setup.ts'],
    include: ['bench/**/*.bench.ts'],
    testTimeout: 1_200_000,
    hookTimeout: 120_000,
    pool: 'forks',
    maxWorkers: 1,
    fileParallelism: false,
    // Tests reach the servers they start on loopback: the operator opens loopback (test/security/ssrf.test.ts checks the default).
    env: { CAIRN_LOG_LEVEL: 'silent', CAIRN_OUTBOUND_PRIVATE_NETS: '127.0.0.0/8,::1/128' },
  },
});
