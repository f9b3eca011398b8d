import type { FastifyReply, FastifyRequest } from 'fastify';
import type { z } from 'zod';
import type { Role } from '../core/status.js';
import type { Principal } from '../store/tokens.js';
import type { CircleRow } from '../store/circles.js';
import type { Deps } from './context.js';

export interface RouteCtx {
  deps: Deps;
  principal: Principal | undefined;
  circle: CircleRow | undefined;
  params: any;
  query: any;
  body: any;
  req: FastifyRequest;
  reply: FastifyReply;
}

/**
 * A platform route, declared as data: the Fastify registration, the input
 * validation and the OpenAPI document all come from this one object.
 */
export interface RouteDef {
  method: 'GET' | 'POST' | 'PATCH' | 'DELETE';
  /** Fastify form, e.g. `/api/:circle/runs`. */
  url: string;
  /** `none`: public; `token`: any valid token; a role: that role in the addressed circle. */
  auth: 'none' | 'token' | 'instance_admin' | Role;
  summary: string;
  tag: string;
  params?: z.ZodType;
  query?: z.ZodType;
  body?: z.ZodType;
  response?: z.ZodType;
  status?: number;
  handler: (ctx: RouteCtx) => Promise<unknown>;
}
