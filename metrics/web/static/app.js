// The dashboards' browser side: reads the page's dashboard definition, fetches each panel from
// /api/v1/dashboards/<name>/panels/<id> with the session cookie, and draws it (uPlot for time series,
// plain HTML for bars and tables). Range, refresh and tag filters live in the URL, so a link (from a
// Prefect artifact, say) opens the same view. When every panel is drawn, <main> gets data-rendered.

const main = document.getElementById("dashboard");
const board = JSON.parse(main.dataset.dashboard);
const csrf = main.dataset.csrf;
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f", "#393b79"];
const canAct = main.dataset.role === "writer" || main.dataset.role === "admin"; // acknowledge, expire
const REFRESH_CHOICES = [0, 10, 30, 60, 300]; // seconds; anything else in a link means off
const charts = new Map(); // panel id -> uPlot instance
let refreshTimer = null;
let generation = 0; // a newer load makes older responses stale

// -- state in the URL --------------------------------------------------------------------------
function readState() {
  const params = new URLSearchParams(location.search);
  const filters = {};
  for (const key of board.filters) {
    const value = params.get(key);
    if (value) filters[key] = value;
  }
  return {
    range: params.get("range") || (params.get("start") ? "custom" : "1h"),
    start: params.get("start") || "",
    end: params.get("end") || "",
    refresh: REFRESH_CHOICES.includes(Number(params.get("refresh"))) ? Number(params.get("refresh")) : 0,
    filters,
  };
}

// A custom range is start (and end); a preset is `range=1h` in the page's URL, `start=1h` for the panel API.
function setRange(params, state, presetKey) {
  if (state.range === "custom") {
    params.set("start", state.start);
    if (state.end) params.set("end", state.end);
  } else {
    params.set(presetKey, state.range);
  }
}

function writeState(state) {
  const params = new URLSearchParams();
  setRange(params, state, "range");
  if (state.refresh) params.set("refresh", String(state.refresh));
  for (const [key, value] of Object.entries(state.filters)) params.set(key, value);
  history.replaceState(null, "", `${location.pathname}?${params}`);
}

function panelQuery(state, extra = {}) {
  const params = new URLSearchParams();
  setRange(params, state, "start");
  for (const [key, value] of Object.entries(state.filters)) params.append("tag", `${key}=${value}`);
  for (const [key, value] of Object.entries(extra)) params.set(key, value);
  return params;
}

// -- fetching ---------------------------------------------------------------------------------
async function api(path, options = {}) {
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  if (options.method && options.method !== "GET") headers["X-CSRF-Token"] = csrf;
  const response = await fetch(path, { credentials: "same-origin", ...options, headers });
  if (response.status === 401) {
    location.assign(`/login?next=${encodeURIComponent(location.pathname + location.search)}`);
    throw new Error("not logged in");
  }
  const body = response.status === 204 ? {} : await response.json();
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

// -- formatting -------------------------------------------------------------------------------
function compact(value) {
  const size = Math.abs(value);
  if (size >= 1e9) return `${(value / 1e9).toFixed(1)}G`;
  if (size >= 1e6) return `${(value / 1e6).toFixed(1)}M`;
  if (size >= 1e4) return `${(value / 1e3).toFixed(1)}k`;
  if (size >= 100) return value.toFixed(0);
  if (size >= 1) return value.toFixed(2).replace(/\.?0+$/, "");
  if (size === 0) return "0";
  return value.toPrecision(2);
}

function withUnit(value, unit) {
  if (value == null || Number.isNaN(value)) return "–";
  if (unit === "%") return `${value.toFixed(1)}%`;
  if (unit === "s") return Math.abs(value) < 1 ? `${(value * 1000).toPrecision(3)} ms` : `${value.toPrecision(3)} s`;
  if (unit === "B/s") return `${compact(value)}B/s`;
  if (unit === "ratio") return `${(value * 100).toFixed(2)}%`;
  return compact(value);
}

function cell(value) {
  if (value === true) return "yes";
  if (value === false) return "no";
  if (value == null) return "";
  if (typeof value === "number") return compact(value);
  const text = String(value);
  return /^\d{4}-\d\d-\d\dT/.test(text) ? text.replace("T", " ").replace(/\.\d+/, "").replace(/(\+00:00|Z)$/, " UTC") : text;
}

function element(tag, attributes = {}, text = null) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text != null) node.textContent = text;
  return node;
}

// -- drawing ----------------------------------------------------------------------------------
function drawTimeseries(article, body, data) {
  const series = [{}];
  const columns = [data.x];
  data.series.forEach((line, index) => {
    const color = PALETTE[index % PALETTE.length];
    const dots = data.style === "points";
    const options = {
      label: line.label,
      stroke: color,
      width: 1.5,
      points: dots ? { show: true, size: 7, fill: color } : { show: false },
      value: (u, v) => withUnit(v, data.unit),
    };
    if (dots) options.paths = () => null;
    series.push(options);
    columns.push(line.values);
  });
  const extra = data.extra || {};
  const bands = [];
  if (data.forecast && extra["forecast yhat"]) {
    const first = series.length;
    series.push({ label: `forecast ${data.forecast.label}`, stroke: "#444", dash: [6, 4], width: 1.5, points: { show: false } });
    series.push({ label: "80% low", stroke: "rgba(68,68,68,0.35)", width: 1, points: { show: false } });
    series.push({ label: "80% high", stroke: "rgba(68,68,68,0.35)", width: 1, points: { show: false } });
    columns.push(extra["forecast yhat"], extra["forecast lower"], extra["forecast upper"]);
    bands.push({ series: [first + 2, first + 1], fill: "rgba(68,68,68,0.12)" });
  }
  if (data.anomalies.length && extra.anomalies) {
    series.push({
      label: "anomaly",
      stroke: "#d62728",
      fill: "#d62728",
      paths: () => null,
      points: { show: true, size: 9, stroke: "#d62728", fill: "#d62728" },
      value: (u, v) => (v == null ? "" : withUnit(v, data.unit)),
    });
    columns.push(extra.anomalies);
  }
  const width = Math.max(280, body.clientWidth - 4);
  const options = {
    width,
    height: 220,
    series,
    bands,
    scales: { x: { time: true, range: (u, low, high) => [Math.min(data.start, low), Math.max(data.end, high)] } },
    axes: [{}, { size: 64, values: (u, ticks) => ticks.map((v) => withUnit(v, data.unit)) }],
    legend: { live: true },
    cursor: { points: { size: 6 } },
  };
  body.replaceChildren();
  const chart = new uPlot(options, columns, body);
  charts.set(article.dataset.panel, chart);
  return data.points;
}

function drawBars(body, data) {
  const list = element("ol", { class: "bars" });
  const largest = Math.max(...data.values, 1e-12);
  data.labels.forEach((label, index) => {
    const row = element("li");
    row.append(element("span", { class: "label", title: label }, label));
    const bar = element("span", { class: "bar" });
    bar.style.width = `${Math.max(1, (100 * data.values[index]) / largest)}%`;
    row.append(bar, element("span", { class: "value" }, withUnit(data.values[index], data.unit)));
    list.append(row);
  });
  body.replaceChildren(list);
  return data.values.length;
}

function drawTable(article, body, data, panel) {
  const table = element("table");
  const head = element("tr");
  for (const column of data.columns) head.append(element("th", {}, column.replaceAll("_", " ")));
  if (data.action) head.append(element("th"));
  const thead = element("thead");
  thead.append(head);
  table.append(thead);
  const rows = element("tbody");
  data.rows.forEach((values, index) => {
    const row = element("tr");
    values.forEach((value, column) => {
      const td = element("td", {}, cell(value));
      if (data.columns[column] === "status" || data.columns[column] === "state") td.className = `tag ${value}`;
      if (data.columns[column] === "priority") td.className = `tag ${String(value).toLowerCase()}`;
      row.append(td);
    });
    if (data.flag && values[data.columns.indexOf(data.flag)]) row.className = "flagged";
    if (data.action) row.append(actionCell(data, index, panel));
    rows.append(row);
  });
  table.append(rows);
  body.replaceChildren(table);
  return data.rows.length;
}

function actionCell(data, index, panel) {
  const td = element("td");
  const id = data.ids[index];
  const status = data.rows[index][data.columns.indexOf(data.action === "acknowledge" ? "status" : "state")];
  const acknowledged = data.action === "acknowledge" && data.rows[index][data.columns.indexOf("acknowledged_by")];
  const possible = data.action === "acknowledge" ? status === "firing" && !acknowledged : data.actionable[index];
  if (!possible || !canAct) return td;
  const button = element("button", { type: "button", class: "small" }, data.action === "acknowledge" ? "Acknowledge" : "Expire");
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      if (data.action === "acknowledge") {
        await api(`/api/v1/alerts/${encodeURIComponent(id)}/acknowledge`, { method: "PUT" });
      } else {
        await api(`/api/v1/alerts/silences/${encodeURIComponent(id)}`, { method: "DELETE" });
      }
      await loadPanel(panel, readState(), generation);
    } catch (error) {
      button.disabled = false;
      setStatus(`${data.action} failed: ${error.message}`);
    }
  });
  td.append(button);
  return td;
}

function note(article, data) {
  const parts = [];
  if (data.interval) parts.push(`${data.interval} buckets`);
  if (data.hidden) parts.push(`${data.hidden} more not shown; filter to see them`);
  if (data.anomalies && data.anomalies.length) parts.push(`${data.anomalies.length} anomalies marked`);
  if (data.elapsed_ms != null) parts.push(`${data.elapsed_ms} ms`);
  article.querySelector(".note").textContent = [panelDescription(article), parts.join(" · ")].filter(Boolean).join(" — ");
}

function panelDescription(article) {
  return board.panels.find((p) => p.id === article.dataset.panel).description;
}

async function loadPanel(panel, state, mine) {
  const article = document.getElementById(`panel-${panel.id}`);
  const body = article.querySelector(".body");
  try {
    const data = await api(`/api/v1/dashboards/${board.name}/panels/${panel.id}?${panelQuery(state)}`);
    if (mine !== generation) return;
    const old = charts.get(panel.id);
    if (old) {
      old.destroy();
      charts.delete(panel.id);
    }
    let points = 0;
    if (data.kind === "timeseries" && data.x.length) points = drawTimeseries(article, body, data);
    else if (data.kind === "bars" && data.labels.length) points = drawBars(body, data);
    else if (data.kind === "table" && data.rows.length) points = drawTable(article, body, data, panel);
    if (!points) body.replaceChildren(element("p", { class: "empty" }, "No data in this range."));
    article.dataset.points = String(points);
    article.dataset.state = points ? "ready" : "empty";
    note(article, data);
  } catch (error) {
    if (mine !== generation) return;
    body.replaceChildren(element("p", { class: "error" }, error.message));
    article.dataset.state = "error";
  }
}

async function loadAll() {
  const state = readState();
  const mine = ++generation;
  const started = performance.now();
  main.removeAttribute("data-rendered");
  setStatus("loading…");
  await Promise.all(board.panels.map((panel) => loadPanel(panel, state, mine)));
  if (mine !== generation) return;
  const elapsed = Math.round(performance.now() - started);
  main.dataset.rendered = String(elapsed);
  performance.mark("dashboard-rendered");
  setStatus(`updated ${new Date().toLocaleTimeString()} · ${elapsed} ms`);
  for (const panel of board.panels) {
    const sql = document.querySelector(`#panel-${panel.id} .sql`);
    if (!sql.hidden) showSql(panel, true);
  }
}

function setStatus(text) {
  document.getElementById("status").textContent = text;
}

// -- "show the query" ---------------------------------------------------------------------------
async function showSql(panel, refresh = false) {
  const article = document.getElementById(`panel-${panel.id}`);
  const pre = article.querySelector(".sql");
  const button = article.querySelector(".show-sql");
  if (!pre.hidden && !refresh) {
    pre.hidden = true;
    button.setAttribute("aria-expanded", "false");
    return;
  }
  try {
    const { sql } = await api(`/api/v1/dashboards/${board.name}/panels/${panel.id}?${panelQuery(readState(), { view: "sql" })}`);
    pre.textContent = sql;
    const copy = element("button", { type: "button", class: "small copy" }, "Copy");
    copy.addEventListener("click", () => navigator.clipboard && navigator.clipboard.writeText(sql));
    pre.prepend(copy);
  } catch (error) {
    pre.textContent = `-- ${error.message}`;
  }
  pre.hidden = false;
  button.setAttribute("aria-expanded", "true");
}

// -- controls ---------------------------------------------------------------------------------
function localInput(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  return new Date(date.getTime() - date.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
}

// The next refresh is scheduled when a load ends, so slow loads never pile up.
function setRefresh(seconds) {
  clearTimeout(refreshTimer);
  refreshTimer = null;
  if (seconds) refreshTimer = setTimeout(async () => {
    await loadAll();
    if (readState().refresh === seconds) setRefresh(seconds);
  }, seconds * 1000);
}

async function loadFilters(state) {
  if (!board.filters.length) return;
  try {
    const values = await api(`/api/v1/dashboards/${board.name}/filters`);
    for (const select of document.querySelectorAll("select.filter")) {
      const key = select.dataset.tag;
      for (const value of values[key] || []) select.append(element("option", { value }, value));
      if (state.filters[key]) {
        if (![...select.options].some((o) => o.value === state.filters[key])) {
          select.append(element("option", { value: state.filters[key] }, state.filters[key]));
        }
        select.value = state.filters[key];
      }
    }
  } catch (error) {
    setStatus(`filters: ${error.message}`);
  }
}

function setUp() {
  const state = readState();
  const range = document.getElementById("range");
  const refresh = document.getElementById("refresh");
  const custom = document.getElementById("custom");
  if (![...range.options].some((option) => option.value === state.range)) {
    range.insertBefore(element("option", { value: state.range }, `Last ${state.range}`), range.lastElementChild);
  }
  range.value = state.range;
  refresh.value = String(state.refresh);
  custom.hidden = state.range !== "custom";
  document.getElementById("from").value = localInput(state.start);
  document.getElementById("to").value = localInput(state.end);

  range.addEventListener("change", () => {
    const next = readState();
    custom.hidden = range.value !== "custom";
    if (range.value === "custom") return;
    next.range = range.value;
    writeState(next);
    loadAll();
  });
  document.getElementById("apply").addEventListener("click", () => {
    const from = document.getElementById("from").value;
    const to = document.getElementById("to").value;
    if (!from) return setStatus("custom range: choose a start");
    const next = readState();
    next.range = "custom";
    next.start = new Date(from).toISOString();
    next.end = to ? new Date(to).toISOString() : "";
    writeState(next);
    loadAll();
  });
  refresh.addEventListener("change", () => {
    const next = readState();
    next.refresh = Number(refresh.value);
    writeState(next);
    setRefresh(next.refresh);
  });
  for (const select of document.querySelectorAll("select.filter")) {
    select.addEventListener("change", () => {
      const next = readState();
      if (select.value) next.filters[select.dataset.tag] = select.value;
      else delete next.filters[select.dataset.tag];
      writeState(next);
      loadAll();
    });
  }
  for (const panel of board.panels) {
    document.querySelector(`#panel-${panel.id} .show-sql`).addEventListener("click", () => showSql(panel));
  }
  const silenceForm = document.querySelector(".silence-form");
  if (silenceForm) {
    silenceForm.addEventListener("submit", async (event) => {
      event.preventDefault();
      const form = new FormData(silenceForm);
      const body = {
        matchers: String(form.get("matchers")).split(",").map((m) => m.trim()).filter(Boolean),
        duration_seconds: Number(form.get("duration")),
        comment: String(form.get("comment")),
      };
      try {
        await api("/api/v1/alerts/silences", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
        silenceForm.reset();
        await loadPanel(board.panels.find((p) => p.id === "silences"), readState(), generation);
        setStatus("silence created");
      } catch (error) {
        setStatus(`silence: ${error.message}`);
      }
    });
  }
  let resizing = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizing);
    resizing = setTimeout(() => {
      for (const [id, chart] of charts) {
        const body = document.querySelector(`#panel-${id} .body`);
        chart.setSize({ width: Math.max(280, body.clientWidth - 4), height: 220 });
      }
    }, 150);
  });
  setRefresh(state.refresh);
  loadFilters(state);
  loadAll();
}

setUp();
