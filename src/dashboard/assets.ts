/** The dashboard's page and script, served as-is (no build step, no third-party code). */
import { unusualExponents } from '../payments/money.ts';

export const DASHBOARD_HTML = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>tillbridge · settlements</title>
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
</style></head>
<body>
<header><h1>tillbridge · settlement report</h1><button id="logout" hidden>Forget key</button></header>
<main>
<section id="login"><h2>Sign in</h2>
<p>Enter your merchant secret key (<code>sk_…</code>). It stays in this browser tab only and is sent
as a bearer header to the API; close the tab to forget it.</p>
<form id="login-form"><input id="key" type="password" autocomplete="off" size="40" placeholder="sk_…" required>
<button type="submit">Open report</button></form><p id="login-error" class="bad"></p></section>
<div id="app" hidden>
<section><form id="filters">
<label>From <input type="date" id="from" required></label>
<label>To <input type="date" id="to" required></label>
<label>Group by <select id="group"><option value="day">day</option><option value="store">store</option><option value="wallet">wallet</option></select></label>
<button type="submit">Show</button> <button type="button" id="csv">Download CSV</button>
</form><p id="error" class="bad"></p></section>
<section><h2>Net settled</h2><div id="chart"></div></section>
<section><h2>Groups</h2><table id="groups"></table></section>
<section><h2>Settlement batches</h2><table id="batches"></table></section>
<section><h2>Open discrepancies</h2><table id="discrepancies"></table></section>
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
  async function api(path) {
    var res = await fetch(path, { headers: { Authorization: 'Bearer ' + key() } });
    if (res.status === 401 || res.status === 403) {
      // Back to the sign-in form, which says why: the report's own error line is hidden with it.
      var refusal = await res.json().catch(function () { return {}; });
      sessionStorage.removeItem('tb_key'); show();
      $('login-error').textContent = 'That key was not accepted' + (refusal.error && refusal.error.message ? ': ' + refusal.error.message : '') + '. Use the merchant secret key (sk_…).';
      throw new Error('the key was not accepted');
    }
    if (!res.ok) { var body = await res.json().catch(function () { return {}; }); throw new Error((body.error && body.error.message) || ('HTTP ' + res.status)); }
    return res;
  }
  // Every page of a list, up to max items: { data, more } (more: some were left out).
  async function pages(path, max) {
    var data = [], after = '', more = true;
    while (more && data.length < max) {
      var page = await (await api(path + (path.indexOf('?') < 0 ? '?' : '&') + 'limit=100' + (after ? '&starting_after=' + encodeURIComponent(after) : ''))).json();
      data = data.concat(page.data); more = page.has_more && page.data.length > 0;
      if (page.data.length) after = page.data[page.data.length - 1].id;
    }
    return { data: data, more: more };
  }
  function leftOut(rows, list, columns) {
    if (list.more) rows.push([['only the first ' + list.data.length + ' are shown', 'muted']].concat(Array(columns - 1).fill([''])));
    return rows;
  }
  function query() { return 'from=' + $('from').value + '&to=' + $('to').value + '&group_by=' + $('group').value; }
  function chart(groups) {
    var el = $('chart'); el.replaceChildren();
    var currencies = Array.from(new Set(groups.map(function (g) { return g.currency; })));
    currencies.forEach(function (cur) {
      var gs = groups.filter(function (g) { return g.currency === cur; });
      var max = Math.max.apply(null, gs.map(function (g) { return Math.abs(g.net.value); }).concat([1]));
      var ns = 'http://www.w3.org/2000/svg', barH = 18, w = 760, left = 150;
      var svg = document.createElementNS(ns, 'svg');
      svg.setAttribute('width', w); svg.setAttribute('height', gs.length * (barH + 6) + 24);
      var title = document.createElementNS(ns, 'text'); title.setAttribute('x', 0); title.setAttribute('y', 12); title.textContent = cur; svg.appendChild(title);
      gs.forEach(function (g, i) {
        var y = 20 + i * (barH + 6), len = Math.round((w - left - 160) * Math.abs(g.net.value) / max);
        var label = document.createElementNS(ns, 'text'); label.setAttribute('x', 0); label.setAttribute('y', y + 13); label.textContent = g.key; svg.appendChild(label);
        var rect = document.createElementNS(ns, 'rect'); rect.setAttribute('x', left); rect.setAttribute('y', y); rect.setAttribute('width', Math.max(1, len)); rect.setAttribute('height', barH);
        rect.setAttribute('fill', g.discrepancies ? '#f79009' : '#2e90fa'); svg.appendChild(rect);
        var v = document.createElementNS(ns, 'text'); v.setAttribute('x', left + len + 6); v.setAttribute('y', y + 13); v.textContent = fmt(g.net) + (g.discrepancies ? '  (' + g.discrepancies + ' discrepancies)' : ''); svg.appendChild(v);
      });
      el.appendChild(svg);
    });
    if (!currencies.length) el.appendChild(text('p', 'No settlements in this period.', 'muted'));
  }
  async function load() {
    $('error').textContent = '';
    try {
      var report = await (await api('/v1/reports/settlements?format=json&' + query())).json();
      chart(report.groups);
      var rows = report.groups.map(function (g) { return [[g.key], [g.currency], [String(g.count), 'n'], [fmt(g.gross), 'n'], [fmt(g.fees), 'n'], [fmt(g.net), 'n'], [String(g.discrepancies), g.discrepancies ? 'n bad' : 'n']]; });
      report.totals.forEach(function (t) { rows.push([['Total'], [t.currency], [String(t.count), 'n'], [fmt(t.gross), 'n'], [fmt(t.fees), 'n'], [fmt(t.net), 'n'], [String(t.discrepancies), 'n']]); });
      table($('groups'), [[report.group_by], ['currency'], ['lines', 'n'], ['gross', 'n'], ['fees', 'n'], ['net', 'n'], ['discrepancies', 'n']], rows);
      // The batches list is newest first and has no date filter: read it all, then keep the period's.
      var batches = await pages('/v1/settlements', 5000);
      table($('batches'), [['date'], ['provider'], ['batch'], ['lines', 'n'], ['gross', 'n'], ['fees', 'n'], ['net', 'n'], ['status']],
        leftOut(batches.data.filter(function (b) { return b.settlement_date >= $('from').value && b.settlement_date <= $('to').value; }).map(function (b) {
          return [[b.settlement_date], [b.provider], [b.provider_batch_id], [String(b.count), 'n'], [fmt({ value: b.gross, currency: b.currency }), 'n'], [fmt({ value: b.fees, currency: b.currency }), 'n'], [fmt({ value: b.net, currency: b.currency }), 'n'], [b.status, b.status === 'reconciled' ? 'ok' : 'bad']];
        }), batches, 8));
      var disc = await pages('/v1/reconciliation/discrepancies', 1000);
      table($('discrepancies'), [['kind'], ['provider'], ['reference'], ['expected', 'n'], ['actual', 'n'], ['detail']], leftOut(disc.data.map(function (d) {
        return [[d.kind, 'bad'], [d.provider], [d.provider_reference || ''], [d.expected ? fmt(d.expected) : '', 'n'], [d.actual ? fmt(d.actual) : '', 'n'], [d.detail]];
      }), disc, 6));
    } catch (e) { $('error').textContent = e.message; }
  }
  async function csv() {
    try {
      var blob = await (await api('/v1/reports/settlements?format=csv&' + query())).blob();
      var a = document.createElement('a'); a.href = URL.createObjectURL(blob);
      a.download = 'settlements_' + $('from').value + '_' + $('to').value + '.csv'; a.click();
      setTimeout(function () { URL.revokeObjectURL(a.href); }, 1000);
    } catch (e) { $('error').textContent = e.message; }
  }
  function show() {
    var signedIn = !!key();
    $('login').hidden = signedIn; $('app').hidden = !signedIn; $('logout').hidden = !signedIn;
    if (signedIn) load();
  }
  var today = new Date(), monthAgo = new Date(today.getTime() - 30 * 86400000);
  $('to').value = today.toISOString().slice(0, 10); $('from').value = monthAgo.toISOString().slice(0, 10);
  $('login-form').addEventListener('submit', function (e) { e.preventDefault(); sessionStorage.setItem('tb_key', $('key').value.trim()); $('key').value = ''; $('login-error').textContent = ''; show(); });
  $('filters').addEventListener('submit', function (e) { e.preventDefault(); load(); });
  $('csv').addEventListener('click', csv);
  $('logout').addEventListener('click', function () { sessionStorage.removeItem('tb_key'); show(); });
  show();
})();
`;
