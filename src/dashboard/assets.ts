/** The dashboard's page and script, served as-is (no build step, no third-party code). */
import { unusualExponents } from '../payments/money.ts';

export const DASHBOARD_HTML = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>tillbridge · settlements</title><link rel="icon" href="data:,">
<style>
body{font-family:system-ui,sans-serif;margin:0;color:#1c2430;background:#f5f6f8}
header{background:#1c2430;color:#fff;padding:.8rem 1.5rem;display:flex;gap:1rem;align-items:center}
header h1{font-size:1.1rem;margin:0;flex:1}
main{padding:1rem 1.5rem;max-width:1100px;margin:auto}
section{background:#fff;border-radius:8px;padding:1rem;margin-bottom:1rem;box-shadow:0 1px 2px #0001}
label{margin-right:.8rem;font-size:.9rem}
input,select,button{font:inherit;padding:.3rem .5rem}
table{border-collapse:collapse;width:100%;font-size:.88rem}
th,td{padding:.35rem .5rem;border-bottom:1px solid #e4e7eb;text-align:left}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.bad{color:#b42318}.ok{color:#067647}.muted{color:#667085}
#login{max-width:32rem;margin:3rem auto}
svg text{font-size:11px;fill:#344054}
svg{max-width:100%;height:auto}
.scroll{overflow-x:auto}
#app.loading section+section{opacity:.45}
</style></head>
<body>
<header><h1>tillbridge · settlement report</h1><button id="logout" hidden>Forget key</button></header>
<main>
<section id="login"><h2>Sign in</h2>
<p>Enter your merchant secret key (<code>sk_…</code>). It stays in this browser tab only and is sent
as a bearer header to the API; close the tab to forget it.</p>
<form id="login-form"><label for="key">Secret key</label> <input id="key" type="password" autocomplete="off" size="40" placeholder="sk_…" required>
<button type="submit">Open report</button></form><p id="login-error" class="bad"></p></section>
<div id="app" hidden>
<section><form id="filters">
<label>From <input type="date" id="from" required></label>
<label>To <input type="date" id="to" required></label>
<label>Group by <select id="group"><option value="day">day</option><option value="store">store</option><option value="wallet">wallet</option></select></label>
<button type="submit">Show</button> <button type="button" id="csv">Download CSV</button>
</form><p id="error" class="bad"></p></section>
<section><h2>Net settled</h2><div id="chart"></div></section>
<section><h2>Groups</h2><div class="scroll"><table id="groups"></table></div></section>
<section><h2>Settlement batches</h2><div class="scroll"><table id="batches"></table></div></section>
<section><h2>Open discrepancies of these batches</h2><div class="scroll"><table id="discrepancies"></table></div></section>
</div></main>
<script src="/dashboard/app.js"></script>
</body></html>`;

export const DASHBOARD_JS = `'use strict';
(function () {
  // Minor units other than hundredths, from the gateway's own ISO 4217 table.
  var EXP = ${JSON.stringify(unusualExponents())};
  var $ = function (id) { return document.getElementById(id); };
  function key() { return sessionStorage.getItem('tb_key'); }
  function fmt(m) {
    var e = EXP[m.currency] === undefined ? 2 : EXP[m.currency];
    var neg = m.value < 0, s = String(Math.abs(m.value)).padStart(e + 1, '0');
    var whole = s.slice(0, s.length - e).replace(/\\B(?=(\\d{3})+(?!\\d))/g, ',');
    return (neg ? '-' : '') + whole + (e ? '.' + s.slice(s.length - e) : '') + ' ' + m.currency;
  }
  function text(tag, value, cls) { var el = document.createElement(tag); el.textContent = value; if (cls) el.className = cls; return el; }
  function table(el, head, rows) {
    el.replaceChildren();
    var tr = document.createElement('tr');
    head.forEach(function (h) { tr.appendChild(text('th', h[0], h[1])); });
    el.appendChild(tr);
    rows.forEach(function (r) {
      var row = document.createElement('tr');
      r.forEach(function (c) { row.appendChild(text('td', c[0], c[1])); });
      el.appendChild(row);
    });
    if (!rows.length) { var empty = document.createElement('tr'); empty.appendChild(text('td', 'nothing in this period', 'muted')); el.appendChild(empty); }
  }
  // Each load (and download) counts: an answer for an earlier one, or for another key, is dropped.
  var generation = 0;
  function Stale() {}
  async function api(path, run) {
    var res = await fetch(path, { headers: { Authorization: 'Bearer ' + run.key } });
    if (run.id !== generation) throw new Stale();
    if (res.status === 401 || res.status === 403) {
      // Back to the sign-in form, which says why: the report's own error line is hidden with it.
      var refusal = await res.json().catch(function () { return {}; });
      signOut();
      $('login-error').textContent = 'That key was not accepted' + (refusal.error && refusal.error.message ? ': ' + refusal.error.message : '') + '. Use the merchant secret key (sk_…).';
      throw new Stale();
    }
    if (!res.ok) { var body = await res.json().catch(function () { return {}; }); throw new Error((body.error && body.error.message) || ('HTTP ' + res.status)); }
    return res;
  }
  // Every page of a list, up to max items: { data, more } (more: some were left out).
  async function pages(path, max, run) {
    var data = [], after = '', more = true;
    while (more && data.length < max) {
      var page = await (await api(path + (path.indexOf('?') < 0 ? '?' : '&') + 'limit=100' + (after ? '&starting_after=' + encodeURIComponent(after) : ''), run)).json();
      data = data.concat(page.data); more = page.has_more && page.data.length > 0;
      if (page.data.length) after = page.data[page.data.length - 1].id;
    }
    return { data: data, more: more };
  }
  function leftOut(rows, list, columns) {
    if (list.more) rows.push([['only the first ' + list.data.length + ' are shown', 'muted']].concat(Array(columns - 1).fill([''])));
    return rows;
  }
  function filters() { return { from: $('from').value, to: $('to').value, group: $('group').value }; }
  function query(f) { return 'from=' + f.from + '&to=' + f.to + '&group_by=' + f.group; }
  // The report on screen: what "Download CSV" downloads.
  var shown;
  function clearReport() {
    shown = undefined;
    ['chart', 'groups', 'batches', 'discrepancies'].forEach(function (id) { $(id).replaceChildren(); });
  }
  function defaults() {
    var today = new Date(), monthAgo = new Date(today.getTime() - 30 * 86400000);
    $('to').value = today.toISOString().slice(0, 10); $('from').value = monthAgo.toISOString().slice(0, 10);
    $('group').value = 'day';
  }
  var NS = 'http://www.w3.org/2000/svg';
  function svgText(x, y, value, anchor) {
    var t = document.createElementNS(NS, 'text'); t.setAttribute('x', x); t.setAttribute('y', y); t.textContent = value;
    if (anchor) t.setAttribute('text-anchor', anchor);
    return t;
  }
  // One bar chart per currency: net per group, a loss drawn leftwards of zero in red.
  function chart(groups) {
    var el = $('chart'); el.replaceChildren();
    var currencies = Array.from(new Set(groups.map(function (g) { return g.currency; })));
    currencies.forEach(function (cur) {
      var gs = groups.filter(function (g) { return g.currency === cur; });
      var nets = gs.map(function (g) { return g.net.value; });
      var most = Math.max.apply(null, nets.concat([0])), least = Math.min.apply(null, nets.concat([0]));
      var span = Math.max(most - least, 1), barH = 18, w = 760, left = 170, room = w - left - 230;
      var zero = left + Math.round(room * -least / span);
      var svg = document.createElementNS(NS, 'svg'), h = gs.length * (barH + 6) + 24;
      svg.setAttribute('viewBox', '0 0 ' + w + ' ' + h); svg.setAttribute('width', w); svg.setAttribute('height', h);
      svg.appendChild(svgText(0, 12, cur));
      gs.forEach(function (g, i) {
        var y = 20 + i * (barH + 6), len = Math.max(1, Math.round(room * Math.abs(g.net.value) / span));
        var name = svgText(0, y + 13, g.key.length > 24 ? g.key.slice(0, 23) + '…' : g.key);
        var full = document.createElementNS(NS, 'title'); full.textContent = g.key; name.appendChild(full);
        svg.appendChild(name);
        var loss = g.net.value < 0, rect = document.createElementNS(NS, 'rect');
        rect.setAttribute('x', loss ? zero - len : zero); rect.setAttribute('y', y); rect.setAttribute('width', len); rect.setAttribute('height', barH);
        rect.setAttribute('fill', loss ? '#d92d20' : g.discrepancies ? '#f79009' : '#2e90fa'); svg.appendChild(rect);
        var end = loss ? zero : zero + len;
        svg.appendChild(svgText(end + 6, y + 13, fmt(g.net) + (g.discrepancies ? ' (' + g.discrepancies + ' discrepanc' + (g.discrepancies > 1 ? 'ies)' : 'y)') : '')));
      });
      if (least < 0) {
        var axis = document.createElementNS(NS, 'line'); axis.setAttribute('x1', zero); axis.setAttribute('x2', zero);
        axis.setAttribute('y1', 16); axis.setAttribute('y2', h); axis.setAttribute('stroke', '#667085'); svg.appendChild(axis);
      }
      el.appendChild(svg);
    });
    if (!currencies.length) el.appendChild(text('p', 'No settlements in this period.', 'muted'));
  }
  async function load() {
    var run = { id: ++generation, key: key() }, f = filters();
    $('error').textContent = ''; $('app').classList.add('loading');
    try {
      var report = await (await api('/v1/reports/settlements?format=json&' + query(f), run)).json();
      // The batches list is newest first and has no date filter: read it all, then keep the period's.
      var batches = await pages('/v1/settlements', 5000, run);
      var disc = await pages('/v1/reconciliation/discrepancies', 1000, run);
      // Overtaken while the last page was read: the later load draws.
      if (run.id !== generation) return;
      var inPeriod = batches.data.filter(function (b) { return b.settlement_date >= f.from && b.settlement_date <= f.to; });
      var dates = new Map(inPeriod.map(function (b) { return [b.id, b.settlement_date]; }));
      chart(report.groups);
      var rows = report.groups.map(function (g) { return [[g.key], [g.currency], [String(g.count), 'n'], [fmt(g.gross), 'n'], [fmt(g.fees), 'n'], [fmt(g.net), 'n'], [String(g.discrepancies), g.discrepancies ? 'n bad' : 'n']]; });
      report.totals.forEach(function (t) { rows.push([['Total'], [t.currency], [String(t.count), 'n'], [fmt(t.gross), 'n'], [fmt(t.fees), 'n'], [fmt(t.net), 'n'], [String(t.discrepancies), 'n']]); });
      table($('groups'), [[report.group_by], ['currency'], ['lines', 'n'], ['gross', 'n'], ['fees', 'n'], ['net', 'n'], ['discrepancies', 'n']], rows);
      table($('batches'), [['date'], ['provider'], ['batch'], ['lines', 'n'], ['gross', 'n'], ['fees', 'n'], ['net', 'n'], ['status']],
        leftOut(inPeriod.map(function (b) {
          return [[b.settlement_date], [b.provider], [b.provider_batch_id], [String(b.count), 'n'], [fmt({ value: b.gross, currency: b.currency }), 'n'], [fmt({ value: b.fees, currency: b.currency }), 'n'], [fmt({ value: b.net, currency: b.currency }), 'n'], [b.status, b.status === 'reconciled' ? 'ok' : 'bad']];
        }), batches, 8));
      table($('discrepancies'), [['batch date'], ['kind'], ['provider'], ['reference'], ['expected', 'n'], ['actual', 'n'], ['detail']], leftOut(disc.data.filter(function (d) { return dates.has(d.settlement_id); }).map(function (d) {
        return [[dates.get(d.settlement_id)], [d.kind, 'bad'], [d.provider], [d.provider_reference || ''], [d.expected ? fmt(d.expected) : '', 'n'], [d.actual ? fmt(d.actual) : '', 'n'], [d.detail]];
      }), disc, 7));
      shown = f;
    } catch (e) {
      if (e instanceof Stale) return;
      // No figures of another period, grouping or key under the error.
      clearReport(); $('error').textContent = e.message;
    } finally {
      if (run.id === generation) $('app').classList.remove('loading');
    }
  }
  async function csv() {
    var f = shown;
    if (!f) { $('error').textContent = 'Show a report first: the download is the report on screen.'; return; }
    var run = { id: generation, key: key() };
    try {
      var blob = await (await api('/v1/reports/settlements?format=csv&' + query(f), run)).blob();
      var a = document.createElement('a'); a.href = URL.createObjectURL(blob);
      a.download = 'settlements_' + f.from + '_' + f.to + '_by_' + f.group + '.csv'; a.click();
      setTimeout(function () { URL.revokeObjectURL(a.href); }, 1000);
    } catch (e) { if (!(e instanceof Stale)) $('error').textContent = e.message; }
  }
  function show() {
    var signedIn = !!key();
    $('login').hidden = signedIn; $('app').hidden = !signedIn; $('logout').hidden = !signedIn;
    if (signedIn) load();
  }
  // Another key (or none) starts from an empty report and the default period: nothing of the last.
  function signOut() {
    generation++; sessionStorage.removeItem('tb_key'); clearReport(); defaults();
    $('error').textContent = ''; $('app').classList.remove('loading'); show();
  }
  defaults();
  $('login-form').addEventListener('submit', function (e) {
    e.preventDefault(); var k = $('key').value.trim(); signOut(); sessionStorage.setItem('tb_key', k);
    $('key').value = ''; $('login-error').textContent = ''; show();
  });
  $('filters').addEventListener('submit', function (e) { e.preventDefault(); load(); });
  $('csv').addEventListener('click', csv);
  $('logout').addEventListener('click', signOut);
  show();
})();
`;
