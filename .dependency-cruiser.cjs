/**
 * The architecture, checked (npm run check → npm run deps). DESIGN: no import
 * cycles; each layer imports only downward:
 *   api → engine → elements → store → db → core
 *   (sandbox, telemetry and net are libraries any layer above core may use)
 * Type-only imports count: a cycle of types is still a cycle of modules.
 */
module.exports = {
  forbidden: [
    {
      name: 'no-circular',
      severity: 'error',
      comment: 'no import cycle anywhere in src/',
      from: {},
      to: { circular: true },
    },
    {
      name: 'core-is-pure',
      severity: 'error',
      comment: 'core holds types, errors and pure functions: no I/O, no other layer',
      from: { path: '^src/core/', pathNot: '\\.test\\.ts$' },
      to: {
        path: [
          '^src/(api|engine|elements|store|db|sandbox|cli|telemetry)/',
          '^(node:)?(fs|child_process|net|http|dgram)(/|$)',
        ],
      },
    },
    {
      name: 'store-below-engine',
      severity: 'error',
      comment:
        'the store is SQL over the database: it never reaches up into the engine, elements, API or CLI',
      from: { path: '^src/(store|db)/', pathNot: '\\.test\\.ts$' },
      to: { path: '^src/(api|engine|elements|cli)/' },
    },
    {
      name: 'elements-below-engine',
      severity: 'error',
      comment: 'element types reach the engine through the port on their op context, never by import',
      from: { path: '^src/elements/', pathNot: '\\.test\\.ts$' },
      to: { path: '^src/(api|engine|cli)/' },
    },
    {
      name: 'net-is-a-library',
      severity: 'error',
      comment: 'outbound HTTP (the SSRF guard) knows nothing of elements, runs or the database',
      from: { path: '^src/net/', pathNot: '\\.test\\.ts$' },
      to: { path: '^src/(api|engine|elements|store|db|sandbox|cli|telemetry)/' },
    },
    {
      name: 'engine-below-api',
      severity: 'error',
      comment: 'the engine knows nothing of HTTP or the CLI',
      from: { path: '^src/engine/', pathNot: '\\.test\\.ts$' },
      to: { path: '^src/(api|cli)/' },
    },
  ],
  options: {
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    doNotFollow: { path: 'node_modules' },
    exclude: { path: '\\.test\\.ts$' },
  },
};
