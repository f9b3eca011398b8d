import { z } from 'zod';
import type { ElementTypeDecl, OperationDecl } from './types.js';

/** JSON Schema (draft 2020-12, what OpenAPI 3.1 and MCP use) of a zod schema. */
export function jsonSchema(s: z.ZodType, io: 'input' | 'output' = 'input'): Record<string, unknown> {
  const out = z.toJSONSchema(s, { target: 'draft-2020-12', io, unrepresentable: 'any' }) as Record<
    string,
    unknown
  >;
  delete out.$schema;
  return out;
}

export interface McpTool {
  name: string;
  description: string;
  inputSchema: Record<string, unknown>;
  outputSchema?: Record<string, unknown>;
}

/** MCP `tools/list` entries for an element: one per run-creating op. */
export function toolsOf(type: ElementTypeDecl, slug: string): McpTool[] {
  return type.operations
    .filter((op: OperationDecl) => op.createsRun)
    .map((op) => ({
      name: `${slug}.${op.name}`,
      description: `${op.summary}. ${op.description ?? ''}`.trim(),
      inputSchema: jsonSchema(op.input),
      ...(op.output ? { outputSchema: jsonSchema(op.output, 'output') } : {}),
    }));
}
