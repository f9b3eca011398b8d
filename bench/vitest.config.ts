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
    env: { CAIRN_LOG_LEVEL: 'silent' },
  },
});
