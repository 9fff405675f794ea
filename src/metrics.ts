import client from 'prom-client';

export interface Metrics {
  registry: client.Registry;
  httpDuration: client.Histogram<'method' | 'route' | 'status'>;
  paymentsByOutcome: client.Counter<'provider' | 'status'>;
  providerCallDuration: client.Histogram<'provider' | 'operation' | 'outcome'>;
  queueDepth: client.Gauge<'queue' | 'state'>;
  reconciliation: client.Counter<'provider' | 'result'>;
}

export function createMetrics(): Metrics {
  const registry = new client.Registry();
  client.collectDefaultMetrics({ register: registry });
  return {
    registry,
    httpDuration: new client.Histogram({
      name: 'tillbridge_http_request_duration_seconds',
      help: 'HTTP request latency',
      labelNames: ['method', 'route', 'status'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
      registers: [registry],
    }),
    paymentsByOutcome: new client.Counter({
      name: 'tillbridge_payments_total',
      help: 'Payments reaching a status, by provider',
      labelNames: ['provider', 'status'],
      registers: [registry],
    }),
    providerCallDuration: new client.Histogram({
      name: 'tillbridge_provider_call_duration_seconds',
      help: 'Latency of calls to wallet providers',
      labelNames: ['provider', 'operation', 'outcome'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: [registry],
    }),
    queueDepth: new client.Gauge({
      name: 'tillbridge_queue_jobs',
      help: 'Jobs in each queue by state',
      labelNames: ['queue', 'state'],
      registers: [registry],
    }),
    reconciliation: new client.Counter({
      name: 'tillbridge_reconciliation_lines_total',
      help: 'Settlement lines reconciled, by result',
      labelNames: ['provider', 'result'],
      registers: [registry],
    }),
  };
}
