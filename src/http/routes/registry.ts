/** Routers of later features (settlements, reports, dashboard) register here. */
import type { Router } from 'express';
import type { Context } from '../../context.ts';
import { settlementsRouter } from './settlements.ts';

export function extraRouters(ctx: Context): Router[] {
  return [settlementsRouter(ctx)];
}
