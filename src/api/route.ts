import type { FastifyReply, FastifyRequest } from 'fastify';
import type { z } from 'zod';
import type { Role } from '../core/status.js';
import type { Principal } from '../store/tokens.js';
import type { CircleRow } from '../store/circles.js';
import type { Deps } from './context.js';

/** What a route handler sees: its query and body as its declared schemas output them. */
export interface RouteCtx<B = unknown, Q = unknown> {
  deps: Deps;
  principal: Principal | undefined;
  circle: CircleRow | undefined;
  params: Record<string, string>;
  query: Q;
  body: B;
  req: FastifyRequest;
  reply: FastifyReply;
}

/**
 * A platform route, declared as data: the Fastify registration, the input
 * validation and the OpenAPI document all come from this one object.
 */
export interface RouteDef<B extends z.ZodType = z.ZodType, Q extends z.ZodType = z.ZodType> {
  method: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';
  /** Fastify form, e.g. `/api/:circle/runs`. */
  url: string;
  /** `none`: public; `token`: any valid token; a role: that role in the addressed circle. */
  auth: 'none' | 'token' | 'instance_admin' | Role;
  summary: string;
  tag: string;
  params?: z.ZodType;
  query?: Q;
  body?: B;
  response?: z.ZodType;
  status?: number;
  /** The body is the raw bytes (a file upload) of any content type, up to `limit` bytes; no body schema. */
  rawBody?: { limit: number };
  /**
   * false: the route does not honour Idempotency-Key (it deduplicates by itself, as a webhook does by
   * its delivery id; a sender's own header must not change what it answers).
   */
  idempotencyKey?: false;
  /** Statuses it answers beyond the usual ones (a public route's 401, a 202), with what each means. */
  responses?: Record<string, string>;
  /** The answer is a Server-Sent Events stream (text/event-stream), not JSON. */
  eventStream?: true;
  /** Request headers it reads, documented as optional header parameters. */
  headers?: { name: string; description: string }[];
  /** What the typed 400 for a body or query its schemas refuse suggests (default: fix the fields in details). */
  inputSuggestion?: string;
  handler(ctx: RouteCtx<z.output<B>, z.output<Q>>): Promise<unknown>;
}

/** A route typed by its schemas (its handler's body and query are their output); held erased in ROUTES. */
export function defineRoute<B extends z.ZodType = z.ZodUndefined, Q extends z.ZodType = z.ZodUndefined>(
  def: RouteDef<B, Q>,
): RouteDef {
  return def as unknown as RouteDef;
}
