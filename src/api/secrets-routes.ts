/**
 * Key rotation of sealed secrets (R-SECRETS), instance admin: after a process starts with a new
 * CAIRN_SECRETS_KEY and the old one in CAIRN_SECRETS_KEY_PREVIOUS, this re-seals every secret with
 * the new key; then the old key can be dropped.
 */
import { keyring } from '../core/sealed.js';
import { deploymentKeyId, resealSecrets } from '../store/sealed.js';
import { defineRoute, type RouteDef } from './route.js';

export const SECRET_ROUTES: RouteDef[] = [
  defineRoute({
    method: 'POST',
    url: '/api/admin/secrets/rotate',
    auth: 'instance_admin',
    tag: 'platform',
    summary: 'Re-seal every secret with the current key (after CAIRN_SECRETS_KEY changed)',
    handler: async ({ deps }) => {
      const ring = keyring();
      const r = await deps.db.transaction(async (tx) => {
        const out = await resealSecrets(tx, ring);
        await deploymentKeyId(tx, ring.currentId, true);
        return out;
      });
      return { key_id: ring.currentId, resealed: r.resealed, rows: r.rows };
    },
  }),
];
