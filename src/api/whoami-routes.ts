/**
 * What a token is (for the web UI, which shows only the controls a token's role allows; the API
 * still decides every request): its role, its circle and whether it is an instance admin.
 */
import { getCircleById } from '../store/circles.js';
import { defineRoute, type RouteDef } from './route.js';

export const WHOAMI_ROUTES: RouteDef[] = [
  defineRoute({
    method: 'GET',
    url: '/api/whoami',
    auth: 'token',
    tag: 'circles',
    summary: "The calling token: its role, its circle's slug (null for an instance admin) and instance_admin",
    handler: async ({ deps, principal }) => {
      const p = principal!;
      const circle = p.circleId ? await getCircleById(deps.db, p.circleId) : undefined;
      return {
        token_id: p.tokenId,
        role: p.role,
        circle: circle?.slug ?? null,
        instance_admin: p.instanceAdmin,
      };
    },
  }),
];
