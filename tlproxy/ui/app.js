// The tlproxy dashboard: reads the admin JSON endpoints under /v1/tlproxy/ and draws them.
//
// The admin key lives in sessionStorage only (this tab, until it closes) and goes out as an
// Authorization header; it is never put in a URL, a cookie or the page. Every value from the
// server is written with textContent, never as HTML: shadow answers are arbitrary text.
// Numbers keep their exact value in a data-value attribute beside the formatted text.
"use strict";

(function () {
  const KEY = "tlproxy-admin-key";
  const COLORS = ["#2457c5", "#d1495b", "#2e933c", "#edae49", "#6a4c93", "#00798c",
                  "#8d6a9f", "#c56b24", "#3d5a80", "#7a7a7a"];
  const STEP_SECONDS = { hour: 3600, day: 86400 };
  const $ = (id) => document.getElementById(id);
  const state = { view: "spend", charts: [], timer: null, shadowRules: new Set() };

  // -- formatting, as `tlproxy report` prints (report.format_value) --------------------------
  function fmt(column, value) {
    if (value === null || value === undefined) return "-";
    if (typeof value === "string" || typeof value === "boolean") return String(value);
    const n = (v, d) => v.toLocaleString("en-US",
      { minimumFractionDigits: d, maximumFractionDigits: d });
    if (column.endsWith("_usd")) {
      const a = Math.abs(value);
      return (value < 0 ? "-" : "") + "$" + n(a, a >= 1000 ? 0 : a >= 1 ? 2 : 4);
    }
    if (column.endsWith("_pct") || column.endsWith("_rate")) return value.toFixed(1) + "%";
    if (column.endsWith("_ms")) return value.toLocaleString("en-US", { maximumFractionDigits: 1 });
    if (column.endsWith("_tokens") && value >= 10000) {
      return value >= 1e6 ? (value / 1e6).toFixed(1) + "M" : (value / 1e3).toFixed(0) + "k";
    }
    if (column === "ts") return new Date(value * 1000).toISOString().replace("T", " ").slice(0, 19);
    return Number.isInteger(value) ? n(value, 0) : value.toFixed(3);
  }

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // A table of rows; columns are [key, label] pairs. Each cell says its column and value.
  function table(target, columns, rows) {
    target.replaceChildren();
    const head = el("tr");
    for (const [key, label] of columns) {
      const th = el("th", { "data-col": key }, label);
      if (rows.length && (typeof rows[0][key] === "string" || key === "ts")) {
        th.classList.add("text");
      }
      head.append(th);
    }
    target.append(el("thead"), el("tbody"));
    target.tHead.append(head);
    if (!rows.length) {
      const tr = el("tr");
      tr.append(el("td", { colspan: columns.length, class: "text" }, "No rows in this window."));
      target.tBodies[0].append(tr);
      return;
    }
    for (const row of rows) {
      const tr = el("tr");
      for (const [key] of columns) {
        const value = row[key];
        const td = el("td", { "data-col": key, "data-value": JSON.stringify(value ?? null) },
                      fmt(key, value));
        if (typeof value === "string" || key === "ts") td.classList.add("text");
        if (key === "breaker") td.classList.add("state-" + value);
        tr.append(td);
      }
      target.tBodies[0].append(tr);
    }
  }

  function cards(target, items) {
    target.replaceChildren();
    for (const [key, label, value] of items) {
      const card = el("div", { class: "card" });
      card.append(el("div", { class: "label" }, label),
                  el("div", { class: "value", "data-col": key,
                              "data-value": JSON.stringify(value ?? null) }, fmt(key, value)));
      target.append(card);
    }
  }

  // -- charts (uPlot) -----------------------------------------------------------------------
  function chart(target, xs, lines, unit) {
    target.replaceChildren();
    if (!xs.length) {
      target.append(el("p", { class: "empty" }, "No rows in this window."));
      return;
    }
    const width = Math.max(300, target.clientWidth - 16);
    const step = STEP_SECONDS[$("step").value];
    const opts = {
      width, height: 260,
      series: [{}, ...lines.map((line, i) => ({
        label: line.label, stroke: COLORS[i % COLORS.length], width: 2,
        dash: line.dash, points: { show: xs.length < 60 }, spanGaps: false,
        value: (u, v) => (v === null || v === undefined ? "-" : fmt(unit, v)),
      }))],
      axes: [{}, { values: (u, ticks) => ticks.map((v) => fmt(unit, v)), size: 70 }],
      // Half a step either side of the buckets: one bucket alone would otherwise
      // stretch the axis over years.
      scales: { x: { time: true, auto: false, range: [xs[0] - step / 2,
                                                      xs[xs.length - 1] + step / 2] } },
    };
    state.charts.push(new uPlot(opts, [xs, ...lines.map((l) => l.values)], target));
    // What is drawn, readable beside the drawing (and by the browser tests).
    target.dataset.lines = JSON.stringify(Object.fromEntries(
      lines.map((l) => [l.label, l.values])));
  }

  // Rows of {bucket, <name>, <value>} as one series per name over the sorted buckets
  // (rows of one name and bucket added up: the few rows the database summed already).
  function pivot(rows, name, value, share) {
    const xs = [...new Set(rows.map((r) => r.bucket))].sort((a, b) => a - b);
    const index = new Map(xs.map((x, i) => [x, i]));
    const totals = new Array(xs.length).fill(0);
    const byName = new Map();
    for (const r of rows) {
      if (!byName.has(r[name])) byName.set(r[name], new Array(xs.length).fill(null));
      const values = byName.get(r[name]);
      values[index.get(r.bucket)] = (values[index.get(r.bucket)] ?? 0) + r[value];
      totals[index.get(r.bucket)] += r[value];
    }
    const lines = [...byName].map(([label, values]) => ({
      label: String(label),
      values: share ? values.map((v, i) => (totals[i] ? 100 * (v || 0) / totals[i] : null))
                    : values,
    }));
    return { xs, lines, totals };
  }

  // -- talking to the proxy ---------------------------------------------------------------
  function windowQuery(extra) {
    const q = new URLSearchParams(extra || {});
    if ($("since").value) q.set("since", $("since").value);
    return q;
  }

  async function api(path, init) {
    const key = sessionStorage.getItem(KEY);
    const response = await fetch(path, {
      ...(init || {}),
      headers: { ...((init || {}).headers || {}), Authorization: "Bearer " + key },
      cache: "no-store",
    });
    if (response.status === 401 || response.status === 403) {
      const body = await response.json().catch(() => ({}));
      const message = (body.error && body.error.message) || response.statusText;
      logout("Refused: " + message);
      throw new Error(message);
    }
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error((body.error && body.error.message) || response.statusText);
    }
    return response;
  }

  const getJSON = async (path, query) =>
    (await api(path + (query && String(query) ? "?" + query : ""))).json();

  // -- the views ------------------------------------------------------------------------------
  const MONEY = [["requests", "requests"], ["attempts", "attempts"], ["spend_usd", "spend"],
                 ["reference_usd", "all premium"], ["saving_usd", "saved"],
                 ["saving_pct", "saved %"], ["wasted_usd", "wasted"],
                 ["shadow_usd", "shadow"], ["classifier_usd", "classifier"],
                 ["prompt_tokens", "tokens in"], ["completion_tokens", "tokens out"],
                 ["errors", "errors"]];

  async function spendView() {
    const by = $("by").value;
    const data = await getJSON("/v1/tlproxy/spend",
                               windowQuery({ step: $("step").value, by }));
    const t = data.total || {};
    cards($("spend-cards"), [["spend_usd", "Spend", t.spend_usd],
                             ["reference_usd", "All-premium counterfactual", t.reference_usd],
                             ["saving_usd", "Saved by routing", t.saving_usd],
                             ["saving_pct", "Saved", t.saving_pct],
                             ["wasted_usd", "Price of speed (wasted)", t.wasted_usd],
                             ["requests", "Requests", t.requests]]);
    const spendLines = pivot(data.series, by, "spend_usd", false);
    const reference = pivot(data.series.map((r) => ({ ...r, all: "all" })), "all",
                            "reference_usd", false);
    const total = pivot(data.series.map((r) => ({ ...r, all: "all" })), "all", "spend_usd",
                        false);
    chart($("spend-chart"), spendLines.xs, [
      ...spendLines.lines.map((l) => ({ ...l, label: "spend: " + l.label })),
      { label: "total spend", values: total.lines[0] ? total.lines[0].values : [] },
      { label: "all premium", values: reference.lines[0] ? reference.lines[0].values : [],
        dash: [6, 4] }], "spend_usd");
    document.querySelectorAll(".by-name").forEach((n) => { n.textContent = by; });
    table($("spend-groups"), [[by, by], ...MONEY], data.groups);
    table($("spend-keys"), [["key", "key"], ["requests", "requests"], ["spend_usd", "spend"],
                            ["saving_usd", "saved"]], data.keys);
    table($("spend-rules"), [["rule", "rule"], ["requests", "requests"],
                             ["spend_usd", "spend"], ["saving_usd", "saved"]], data.rules);
  }

  async function exportCSV() {
    const q = windowQuery({ by: $("by").value, format: "csv" });
    const text = await (await api("/v1/tlproxy/spend?" + q)).text();
    const link = el("a", { download: `tlproxy-spend-by-${$("by").value}.csv` });
    link.href = URL.createObjectURL(new Blob([text], { type: "text/csv" }));
    document.body.append(link);
    link.click();
    link.remove();
  }

  async function routingView() {
    const data = await getJSON("/v1/tlproxy/routing", windowQuery({ step: $("step").value }));
    const rules = pivot(data.series, "rule", "requests", true);
    chart($("routing-rules-chart"), rules.xs, rules.lines, "share_pct");
    const tiers = pivot(data.series, "tier", "requests", true);
    chart($("routing-tiers-chart"), tiers.xs, tiers.lines, "share_pct");
    const total = data.series.reduce((s, r) => s + r.requests, 0);
    const target = $("routing-policies");
    target.replaceChildren();
    for (const policy of data.policies) {
      target.append(el("h2", {}, `Policy ${policy.policy} (strategy ${policy.strategy}): ` +
                                 "rules in order, first match wins"));
      const t = el("table", { "data-policy": policy.policy });
      const box = el("div", { class: "scroll" });
      box.append(t);
      target.append(box);
      table(t, [["name", "rule"], ["when", "when"], ["tier", "tier"], ["requests", "hits"],
                ["share_pct", "share"]],
            policy.rules.map((r) => ({ ...r, share_pct: total ? 100 * r.requests / total
                                                               : null })));
    }
    table($("routing-other"), [["rule", "rule"], ["tier", "tier"], ["requests", "hits"]],
          data.other);
  }

  async function explain() {
    const out = $("explain-out");
    out.textContent = "";
    try {
      const response = await api("/v1/tlproxy/explain", {
        method: "POST", body: $("explain-body").value,
        headers: { "Content-Type": "application/json" } });
      out.textContent = (await response.json()).text;
    } catch (error) {
      out.textContent = String(error.message || error);
    }
  }

  async function raceView() {
    const data = await getJSON("/v1/tlproxy/race", windowQuery({ step: $("step").value }));
    const t = data.total || {};
    cards($("race-cards"), [["client_ttft_p50_ms", "Client TTFT p50 (ms)", t.client_ttft_p50_ms],
                            ["client_ttft_p99_ms", "Client TTFT p99 (ms)", t.client_ttft_p99_ms],
                            ["hedges", "Hedges", t.hedges],
                            ["wasted_usd", "Wasted", t.wasted_usd],
                            ["error_rate_pct", "Error rate", t.error_rate_pct],
                            ["failed_attempts", "Failed attempts", t.failed_attempts]]);
    const xs = data.series.map((r) => r.bucket);
    const col = (name) => data.series.map((r) => r[name]);
    chart($("race-client-chart"), xs, [50, 90, 99].map((p) => ({
      label: `p${p}`, values: col(`client_ttft_p${p}_ms`) })), "ttft_ms");
    const models = pivot(data.models, "model", "upstream_ttft_p50_ms", false);
    chart($("race-models-chart"), models.xs, models.lines, "ttft_ms");
    chart($("race-counts-chart"), xs, [
      { label: "hedges", values: col("hedges") },
      { label: "failed attempts", values: col("failed_attempts") },
      { label: "errors", values: col("errors") }], "count");
    table($("race-outcomes"), [["kind", "kind"], ["role", "role"], ["status", "status"],
                               ["attempts", "attempts"], ["cost_usd", "cost"]], data.outcomes);
  }

  async function shadowView() {
    const rule = $("shadow-rule").value;
    const data = await getJSON("/v1/tlproxy/shadow", windowQuery(rule ? { rule } : {}));
    if (!rule) {
      for (const row of data.summary) {
        if (!state.shadowRules.has(row.rule)) {
          state.shadowRules.add(row.rule);
          $("shadow-rule").append(el("option", { value: row.rule }, row.rule));
        }
      }
    }
    table($("shadow-summary"), [
      ["rule", "rule"], ["pairs", "pairs"], ["primary_models", "primary"],
      ["shadow_models", "shadow"], ["shadow_errors", "shadow errors"],
      ["primary_cost_usd", "primary cost"], ["shadow_cost_usd", "shadow cost"],
      ["primary_client_ttft_p50_ms", "primary TTFT p50"],
      ["shadow_ttft_p50_ms", "shadow TTFT p50"], ["exact_match_pct", "exact match"],
      ["length_ratio", "length ratio"], ["json_agreement_pct", "JSON agreement"]],
      data.summary);
    const target = $("shadow-pairs");
    target.replaceChildren();
    if (!data.pairs.length) target.append(el("p", { class: "empty" }, "No pairs in this window."));
    for (const pair of data.pairs) {
      const box = el("div", { class: "pair", "data-request": pair.request_id });
      box.append(el("h3", {}, `${pair.request_id} · rule ${pair.rule} · ` +
                              `${fmt("ts", pair.ts)}` + (pair.prompt ? ` · asked: ${pair.prompt}`
                                                                      : "")));
      for (const side of ["primary", "shadow"]) {
        const s = pair[side];
        const cell = el("div");
        cell.append(el("div", { class: "meta" },
                       `${side}: ${s.model} · ` + (s.ttft_ms === null ? "not streamed · "
                         : `TTFT ${fmt("ttft_ms", s.ttft_ms)} ms · `) +
                       `${fmt("cost_usd", s.cost_usd)}` + (s.ok ? "" : ` · failed: ${s.error}`)),
                    el("div", { class: "side" }, s.text ?? "(no answer)"));
        box.append(cell);
      }
      target.append(box);
    }
  }

  async function liveView() {
    const [live, recent] = await Promise.all([
      getJSON("/v1/tlproxy/live"), getJSON("/v1/tlproxy/requests", "limit=50")]);
    const open = live.models.filter((m) => m.breaker !== "closed").length;
    cards($("live-cards"), [["ready", "Ready", live.ready ? "yes" : "no"],
                            ["open_streams", "Open streams", live.open_streams],
                            ["breakers_open", "Breakers not closed", open],
                            ["queued", "Ledger queue", live.ledger ? live.ledger.queued : null]]);
    table($("live-models"), [["model", "model"], ["tier", "tier"], ["provider", "provider"],
                             ["breaker", "breaker"], ["ttft_ewma_ms", "TTFT (EWMA)"],
                             ["ttft_p50_ms", "TTFT p50"], ["error_rate", "error rate"],
                             ["attempts", "attempts"], ["failures", "failures"]], live.models);
    table($("live-requests"), [["ts", "time (UTC)"], ["request_id", "id"], ["key", "key"],
                               ["tier", "tier"], ["model", "model"], ["rule", "rule"],
                               ["client_ttft_ms", "TTFT (ms)"],
                               ["prompt_tokens", "tokens in"],
                               ["completion_tokens", "tokens out"], ["cost_usd", "cost"],
                               ["status", "outcome"]], recent.data);
  }

  const VIEWS = { spend: spendView, routing: routingView, race: raceView, shadow: shadowView,
                  live: liveView };

  async function show(view) {
    state.view = view;
    clearInterval(state.timer);
    state.charts.forEach((c) => c.destroy());
    state.charts = [];
    document.querySelectorAll("nav button").forEach(
      (b) => b.classList.toggle("active", b.dataset.view === view));
    document.querySelectorAll(".view").forEach((s) => { s.hidden = s.id !== "view-" + view; });
    // Recorded prompts and answers stay on the page only while their view is shown.
    if (view !== "shadow") $("shadow-pairs").replaceChildren();
    await refresh();
    if (view === "live") state.timer = setInterval(refresh, 2000);
  }

  async function refresh() {
    const status = $("status");
    status.textContent = "loading…";
    document.body.dataset.loaded = "";
    try {
      await VIEWS[state.view]();
      status.textContent = "updated " + new Date().toLocaleTimeString();
      document.body.dataset.loaded = state.view;
    } catch (error) {
      status.textContent = "error: " + (error.message || error);
    }
  }

  function logout(message) {
    sessionStorage.removeItem(KEY);
    clearInterval(state.timer);
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    for (const id of ["tabs", "logout", "controls"]) $(id).hidden = true;
    document.querySelectorAll(".view").forEach((s) => { s.hidden = true; });
    // Nothing read with the key stays on the page without it.
    state.charts.forEach((c) => c.destroy());
    state.charts = [];
    document.querySelectorAll(".view table, .view .chart, .view .cards, #shadow-pairs, " +
                              "#routing-policies, #explain-out").forEach((n) => n.replaceChildren());
    document.body.dataset.loaded = "";
  }

  function start() {
    $("login").hidden = true;
    $("login-error").textContent = "";
    for (const id of ["tabs", "logout", "controls"]) $(id).hidden = false;
    show(state.view);
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("login").addEventListener("submit", (event) => {
      event.preventDefault();
      sessionStorage.setItem(KEY, $("key").value.trim());
      $("key").value = "";
      start();
    });
    $("logout").addEventListener("click", () => logout());
    document.querySelectorAll("nav button").forEach(
      (b) => b.addEventListener("click", () => show(b.dataset.view)));
    for (const id of ["since", "step", "by", "shadow-rule"]) {
      $(id).addEventListener("change", refresh);
    }
    $("reload").addEventListener("click", refresh);
    $("csv").addEventListener("click", () => exportCSV().catch(
      (e) => { $("status").textContent = "error: " + e.message; }));
    $("explain").addEventListener("click", explain);
    if (sessionStorage.getItem(KEY)) start();
  });
})();
