/* seganypet web viewer: NiiVue (global `niivue`, built by scripts/setup_web.sh) + the JSON API.
 * Clicks are converted from world mm (RAS, NiiVue's location) to voxel (i, j, k) with the inverse of
 * the image's affine sent by the server, so the server always receives indices of the uploaded file. */
"use strict";

const $ = (id) => document.getElementById(id);
const S = {
  sid: null, state: null, token: localStorage.getItem("seganypet-token") || "",
  tool: "point", negative: false, busy: false, pet: null, labels: null, version: 0,
  downXY: null, shift: false, stats: null, error: "",
  clicks: 0,
};
window.seganypet = S;

// ------------------------------------------------------------------ HTTP
function authHeaders() { return S.token ? { Authorization: "Bearer " + S.token } : {}; }

async function api(method, path, body) {
  const opts = { method, headers: authHeaders() };
  if (body instanceof FormData) opts.body = body;
  else if (body !== undefined) { opts.body = JSON.stringify(body); opts.headers["Content-Type"] = "application/json"; }
  const r = await fetch(path, opts);
  if (!r.ok) {
    let msg = r.status + " " + r.statusText;
    try { const j = await r.json(); if (j.detail) msg = j.detail; } catch (e) { /* not JSON */ }
    if (r.status === 401) $("token-box").hidden = false;
    throw new Error(msg);
  }
  return r;
}
const getJSON = async (path) => (await api("GET", path)).json();

function setStatus(msg, kind) {
  const el = $("status");
  el.textContent = msg;
  el.className = "status" + (kind ? " " + kind : "");
  S.error = kind === "error" ? msg : "";
}

async function busy(label, fn) {
  if (S.busy) { setStatus("Still working on the previous request…", "busy"); return; }
  S.busy = true;
  document.body.classList.add("busy");
  document.body.dataset.busy = "1";
  setStatus(label + "…", "busy");
  const t0 = performance.now();
  try {
    await fn();
    setStatus(label + " done (" + Math.round(performance.now() - t0) + " ms).");
  } catch (e) {
    setStatus(e.message || String(e), "error");
  } finally {
    S.busy = false;
    document.body.classList.remove("busy");
    document.body.dataset.busy = "0";
  }
}

// ------------------------------------------------------------------ geometry
function invert4(m) { // 4x4 row-major (array of rows) -> inverse (Gauss-Jordan)
  const a = m.map((r, i) => r.concat([0, 1, 2, 3].map((j) => (i === j ? 1 : 0))));
  for (let c = 0; c < 4; c++) {
    let p = c;
    for (let r = c + 1; r < 4; r++) if (Math.abs(a[r][c]) > Math.abs(a[p][c])) p = r;
    [a[c], a[p]] = [a[p], a[c]];
    const d = a[c][c];
    for (let j = 0; j < 8; j++) a[c][j] /= d;
    for (let r = 0; r < 4; r++) if (r !== c) { const f = a[r][c]; for (let j = 0; j < 8; j++) a[r][j] -= f * a[c][j]; }
  }
  return a.map((r) => r.slice(4));
}
function mmToIjk(mm) {
  const inv = S.inv;
  return [0, 1, 2].map((r) => Math.round(inv[r][0] * mm[0] + inv[r][1] * mm[1] + inv[r][2] * mm[2] + inv[r][3]));
}
function ijkToMm(v) {
  const A = S.state.affine;
  return [0, 1, 2].map((r) => A[r][0] * v[0] + A[r][1] * v[1] + A[r][2] * v[2] + A[r][3]);
}
function inside(v) { return v.every((x, a) => x >= 0 && x < S.state.shape[a]); }

// ------------------------------------------------------------------ NiiVue
const nv = new niivue.Niivue({
  backColor: [0.08, 0.09, 0.1, 1], show3Dcrosshair: true, isColorbar: false, crosshairWidth: 1,
  crosshairColor: [0.2, 0.8, 1, 0.6], multiplanarShowRender: 1, dragAndDropEnabled: false,
});
S.nv = nv;

function applyDisplay() {
  if (!S.pet) return;
  const cm = $("cmap").value;
  S.pet.colormap = cm === "hot" ? "hot" : "gray";
  S.pet.colormapInvert = cm !== "hot";
  S.pet.cal_min = parseFloat($("wmin").value) || 0;
  S.pet.cal_max = parseFloat($("wmax").value) || 1;
  nv.updateGLVolume();
}

function applyView() {
  const v = $("view").value;
  const t = { multi: nv.sliceTypeMultiplanar, axial: nv.sliceTypeAxial, coronal: nv.sliceTypeCoronal,
              sagittal: nv.sliceTypeSagittal, render: nv.sliceTypeRender }[v];
  nv.setSliceType(t);
}

function applyTool() {
  $("tool-point").classList.toggle("on", S.tool === "point");
  $("tool-box").classList.toggle("on", S.tool === "box");
  $("negative").classList.toggle("on", S.negative);
  nv.opts.dragModePrimary = S.tool === "box" ? nv.dragModes.callbackOnly : nv.dragModes.crosshair;
  nv.opts.dragMode = S.tool === "box" ? nv.dragModes.callbackOnly : nv.dragModes.contrast;
}

function hexToRgb(h) { return [1, 3, 5].map((i) => parseInt(h.slice(i, i + 2), 16)); }

function labelLut() {
  const objs = (S.state && S.state.objects) || [];
  const n = Math.max(1, ...objs.map((o) => o.label));
  const R = [0], G = [0], B = [0], A = [0], I = [0], labels = ["background"];
  for (let l = 1; l <= n; l++) {
    const o = objs.find((x) => x.label === l);
    const c = o ? hexToRgb(o.color) : [0, 0, 0];
    R.push(c[0]); G.push(c[1]); B.push(c[2]); A.push(o ? 255 : 0); I.push(l); labels.push(o ? o.name : "");
  }
  return { R, G, B, A, I, labels };
}

async function loadLabels() {
  S.version += 1;
  const vol = await niivue.NVImage.loadFromUrl({
    url: `/api/sessions/${S.sid}/labels.nii.gz?v=${S.version}`, headers: authHeaders(), name: "labels.nii.gz",
    opacity: 0.55,
  });
  vol.setColormapLabel(labelLut());
  if (S.labels) nv.removeVolume(S.labels);
  nv.addVolume(vol);
  S.labels = vol;
  nv.updateGLVolume();
  S.labelVersion = S.version;
}

async function loadMip() {
  const r = await api("GET", `/api/sessions/${S.sid}/mip.png?wmax=${parseFloat($("wmax").value) || 8}&v=${S.version}`);
  const url = URL.createObjectURL(await r.blob());
  const img = $("mip");
  if (img.src) URL.revokeObjectURL(img.src);
  img.src = url;
}

// ------------------------------------------------------------------ state rendering
function renderObjects() {
  const ul = $("objects");
  ul.innerHTML = "";
  for (const o of S.state.objects) {
    const li = document.createElement("li");
    li.className = o.label === S.state.active_label ? "active" : "";
    li.dataset.label = o.label;
    const col = document.createElement("input");
    col.type = "color"; col.value = o.color; col.title = "colour";
    col.onchange = () => edit("Colour", "PATCH", `/objects/${o.label}`, { color: col.value });
    const name = document.createElement("span");
    name.className = "name"; name.textContent = o.name;
    name.title = "double-click to rename";
    name.ondblclick = () => {
      const nn = prompt("Name of object " + o.label, o.name);
      if (nn) edit("Rename", "PATCH", `/objects/${o.label}`, { name: nn });
    };
    const vox = document.createElement("span");
    vox.className = "vox"; vox.textContent = o.voxels + " vx";
    const del = document.createElement("button");
    del.className = "small"; del.textContent = "✕"; del.title = "delete";
    del.onclick = (e) => { e.stopPropagation(); if (confirm("Delete " + o.name + "?")) edit("Delete", "DELETE", `/objects/${o.label}`); };
    li.onclick = (e) => { if (e.target === li || e.target === name) edit("Select", "POST", `/objects/${o.label}/select`); };
    li.append(col, name, vox, del);
    ul.append(li);
  }
}

function fmt(x, d) { return x === null || x === undefined ? "–" : Number(x).toFixed(d); }

async function refreshStats() {
  const st = await getJSON(`/api/sessions/${S.sid}/stats`);
  S.stats = st;
  const tb = document.querySelector("#stats tbody");
  tb.innerHTML = "";
  for (const o of st.objects || []) {
    const tr = document.createElement("tr");
    tr.innerHTML = `<td></td><td>${fmt(o.volume_ml, 2)}</td><td>${fmt(o.suv_max, 2)}</td>` +
      `<td>${fmt(o.suv_mean, 2)}</td><td>${fmt(o.suv_peak, 2)}</td><td>${fmt(o.tlg, 1)}</td>`;
    tr.firstChild.textContent = o.name;
    tb.append(tr);
  }
}

async function applyState(state, { labels = true } = {}) {
  S.state = state;
  S.inv = invert4(state.affine);
  renderObjects();
  $("image-info").textContent = `${state.name}: ${state.shape.join("×")} voxels, ` +
    `${state.spacing.map((s) => s.toFixed(2)).join("×")} mm, ${state.units}`;
  document.body.dataset.voxels = state.voxels === undefined ? "" : String(state.voxels);
  if (labels) await Promise.all([loadLabels(), loadMip(), refreshStats()]);
}

// ------------------------------------------------------------------ actions
async function openState(state) {
  S.sid = state.id;
  localStorage.setItem("seganypet-session", S.sid);
  for (const v of [...nv.volumes]) nv.removeVolume(v);
  S.labels = null;
  S.pet = await niivue.NVImage.loadFromUrl({
    url: `/api/sessions/${S.sid}/image.nii.gz`, headers: authHeaders(), name: "pet.nii.gz",
  });
  nv.addVolume(S.pet);
  applyDisplay();
  applyView();
  await applyState(state);
  listSessions();
}

function edit(label, method, sub, body) {
  if (!S.sid) { setStatus("Open an image first.", "error"); return Promise.resolve(); }
  return busy(label, async () => {
    const state = await (await api(method, `/api/sessions/${S.sid}${sub}`, body)).json();
    await applyState(state);
  });
}

function clickAt(ijk, positive) {
  if (!inside(ijk)) { setStatus(`The point ${ijk} is outside the image.`, "error"); return Promise.resolve(); }
  S.clicks += 1;
  return edit(positive ? "Positive click" : "Negative click", "POST", "/points", { ijk, positive });
}

function download(fmtName) {
  if (!S.sid) { setStatus("Open an image first.", "error"); return; }
  busy("Export " + fmtName, async () => {
    const r = await api("GET", `/api/sessions/${S.sid}/export?format=${fmtName}`);
    const cd = r.headers.get("content-disposition") || "";
    const m = /filename="?([^";]+)"?/.exec(cd);
    const a = document.createElement("a");
    a.href = URL.createObjectURL(await r.blob());
    a.download = m ? m[1] : "segmentation";
    document.body.append(a);
    a.click();
    a.remove();
  });
}

async function listImages() {
  try {
    const { images } = await getJSON("/api/images");
    const sel = $("images");
    sel.length = 1;
    for (const n of images) sel.add(new Option(n, n));
  } catch (e) { setStatus(e.message, "error"); }
}
async function listSessions() {
  try {
    const { sessions } = await getJSON("/api/sessions");
    const sel = $("sessions");
    sel.length = 1;
    for (const s of sessions) sel.add(new Option(`${s.name} (${s.id.slice(0, 6)})`, s.id));
  } catch (e) { /* shown elsewhere */ }
}

// ------------------------------------------------------------------ events
nv.onDragRelease = (p) => {
  if (S.tool !== "box" || !S.state) return;
  const a = mmToIjk(p.mmStart), b = mmToIjk(p.mmEnd);
  // a box dragged on one slice is thin along that slice's axis: widen it to the other extent
  const axis = [0, 1, 2].find((ax) => a[ax] === b[ax]);
  if (axis !== undefined) {
    const half = Math.round(Math.max(...[0, 1, 2].filter((x) => x !== axis).map((x) => Math.abs(a[x] - b[x]))) / 2);
    a[axis] = Math.max(0, a[axis] - half); b[axis] = Math.min(S.state.shape[axis] - 1, b[axis] + half);
  }
  edit("Box", "POST", "/boxes", { a, b });
};

const canvas = $("gl");
function canvasFrac(e) { // fraction of the volume under the pointer, null outside the 2D slices
  const r = canvas.getBoundingClientRect();
  const dpr = canvas.width / r.width;
  const frac = nv.canvasPos2frac([(e.clientX - r.left) * dpr, (e.clientY - r.top) * dpr]);
  return frac && frac[0] >= 0 ? frac : null;
}
canvas.addEventListener("pointerdown", (e) => { S.downXY = [e.clientX, e.clientY]; S.shift = e.shiftKey; }, true);
canvas.addEventListener("pointerup", (e) => {
  if (S.tool !== "point" || e.button !== 0 || !S.state || !S.downXY) return;
  const moved = Math.hypot(e.clientX - S.downXY[0], e.clientY - S.downXY[1]);
  S.downXY = null;
  if (moved > 4) return; // a drag (NiiVue pans / moves the crosshair)
  const frac = canvasFrac(e);
  if (!frac) return; // a click in the 3D view
  clickAt(mmToIjk(nv.frac2mm(frac)), !(S.negative || S.shift || e.shiftKey));
});

document.addEventListener("keydown", (e) => {
  if (e.target.tagName === "INPUT" || e.target.tagName === "SELECT") return;
  const k = e.key.toLowerCase();
  if ((e.ctrlKey || e.metaKey) && k === "z") { e.preventDefault(); edit(e.shiftKey ? "Redo" : "Undo", "POST", e.shiftKey ? "/redo" : "/undo"); }
  else if ((e.ctrlKey || e.metaKey) && k === "y") { e.preventDefault(); edit("Redo", "POST", "/redo"); }
  else if (k === "n") { S.negative = !S.negative; applyTool(); }
  else if (k === "b") { S.tool = "box"; applyTool(); }
  else if (k === "p") { S.tool = "point"; applyTool(); }
});

$("tool-point").onclick = () => { S.tool = "point"; applyTool(); };
$("tool-box").onclick = () => { S.tool = "box"; applyTool(); };
$("negative").onclick = () => { S.negative = !S.negative; applyTool(); };
$("undo").onclick = () => edit("Undo", "POST", "/undo");
$("redo").onclick = () => edit("Redo", "POST", "/redo");
$("reset").onclick = () => edit("Reset", "POST", "/reset");
$("add-object").onclick = () => edit("New object", "POST", "/objects", {});
$("export-nifti").onclick = () => download("nifti");
$("export-seg").onclick = () => download("dicom-seg");
$("cmap").onchange = applyDisplay;
$("wmin").onchange = applyDisplay;
$("wmax").onchange = () => { applyDisplay(); if (S.sid) loadMip().catch(() => {}); };
$("view").onchange = applyView;
$("file").onchange = () => {
  const f = $("file").files[0];
  if (!f) return;
  const fd = new FormData();
  fd.append("file", f, f.name);
  busy("Upload " + f.name, async () => openState(await (await api("POST", "/api/sessions", fd)).json()));
};
$("open-image").onclick = () => {
  const name = $("images").value;
  if (!name) { setStatus("Choose an image of the data folder first.", "error"); return; }
  busy("Open " + name, async () => openState(await (await api("POST", "/api/sessions/open", { image: name })).json()));
};
$("phantom").onclick = () => busy("Make phantom", async () =>
  openState(await (await api("POST", "/api/sessions/open", { phantom: 0 })).json()));
$("sessions").onchange = () => {
  const id = $("sessions").value;
  if (id) busy("Resume session", async () => openState(await getJSON(`/api/sessions/${id}`)));
};
$("save-token").onclick = () => {
  S.token = $("token").value.trim();
  localStorage.setItem("seganypet-token", S.token);
  $("token-box").hidden = true;
  init();
};

// for tests and scripting: the CSS pixel of voxel ijk in the axial view (crosshair moved there)
window.viewer = {
  state: S,
  canvasPointOfVoxel(ijk) {
    const frac = nv.mm2frac(ijkToMm(ijk));
    nv.scene.crosshairPos = frac;
    nv.drawScene();
    const hit = nv.frac2canvasPosWithTile(frac, nv.sliceTypeAxial);
    if (!hit) return null;
    const r = canvas.getBoundingClientRect();
    const dpr = canvas.width / r.width;
    return [r.left + hit.pos[0] / dpr, r.top + hit.pos[1] / dpr];
  },
  clickAt,
};

async function init() {
  applyTool();
  try {
    await getJSON("/api/info");
  } catch (e) { setStatus(e.message, "error"); return; }
  await listImages();
  await listSessions();
  const last = localStorage.getItem("seganypet-session");
  document.body.dataset.ready = "1";
  if (last && !S.sid) {
    let state = null;
    try { state = await getJSON(`/api/sessions/${last}`); } catch (e) { localStorage.removeItem("seganypet-session"); }
    if (state) await busy("Resume session", async () => openState(state));
  }
}

nv.attachTo("gl").then(init);
