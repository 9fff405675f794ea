/** Routers of later features (settlements, reports, dashboard) register here. */
import type { Router } from 'express';
import type { Context } from '../../context.ts';

export function extraRouters(_ctx: Context): Router[] {
  return [];
}
