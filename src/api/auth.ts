import { errors, type CairnError } from '../core/errors.js';
import { roleAtLeast, type Role } from '../core/status.js';
import type { Db } from '../db/types.js';
import { findPrincipal, type Principal } from '../store/tokens.js';
import type { CircleRow } from '../store/circles.js';

/** Resolves bearer tokens, with a short cache so a hot path costs no query. */
export class Authenticator {
  private readonly cache = new Map<string, { p: Principal | undefined; at: number }>();

  constructor(
    private readonly db: Db,
    private readonly ttlMs = 5_000,
  ) {}

  async principal(header: string | undefined): Promise<Principal> {
    if (!header) throw errors.unauthenticated();
    const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
    if (!m) throw errors.unauthenticated('The Authorization header must be `Bearer <token>`.');
    const token = m[1]!;
    const now = Date.now();
    const hit = this.cache.get(token);
    let p: Principal | undefined;
    if (hit && now - hit.at < this.ttlMs) p = hit.p;
    else {
      p = await findPrincipal(this.db, token);
      if (this.cache.size > 10_000) this.cache.clear();
      this.cache.set(token, { p, at: now });
    }
    if (!p) throw errors.unauthenticated('The token is unknown or revoked.');
    return p;
  }

  forget(): void {
    this.cache.clear();
  }
}

export function actorOf(p: Principal): string {
  return p.instanceAdmin ? `admin-token:${p.tokenId}` : `token:${p.tokenId}`;
}

/**
 * What a circle token learns about a circle that is not its own: exactly what it
 * learns about one that does not exist (the slug is not echoed either), so
 * circle names cannot be enumerated.
 */
export function circleNotFound(): CairnError {
  return errors.notFound(
    'CIRCLE_NOT_FOUND',
    'No such circle is visible to this token.',
    'Check the circle slug; GET /api/circles lists the circles your token sees.',
  );
}

/**
 * A circle token acts only in its circle (another circle is "not found");
 * an instance-admin token acts everywhere.
 */
export function authorize(p: Principal, circle: CircleRow | undefined, need: Role | 'instance_admin'): void {
  if (need === 'instance_admin') {
    if (!p.instanceAdmin) {
      throw errors.forbidden(
        'This needs an instance-admin token.',
        'Use the bootstrap token printed at first start (or CAIRN_BOOTSTRAP_TOKEN).',
      );
    }
    return;
  }
  if (p.instanceAdmin) return;
  if (!circle || p.circleId !== circle.id) throw circleNotFound();
  if (!roleAtLeast(p.role, need)) {
    throw errors.forbidden(
      `This needs the ${need} role; the token has ${p.role}.`,
      `Create a token with role ${need} or higher: cairn tokens create --role ${need}.`,
    );
  }
}
