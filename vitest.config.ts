import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    globalSetup: ['./test/global-setup.ts'],
    include: ['src/**/*.test.ts', 'test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    pool: 'forks',
    maxWorkers: 2,
    // Tests reach the servers they start on loopback: the operator opens loopback (test/security/ssrf.test.ts checks the default).
    env: { CAIRN_LOG_LEVEL: 'silent', CAIRN_OUTBOUND_PRIVATE_NETS: '127.0.0.0/8,::1/128' },
  },
});
