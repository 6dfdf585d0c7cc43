// ComfyUI-Performer frontend extension (served at /extensions/ComfyUI-Performer/js/performer.js).
//
// * Marks Performer nodes with the pack's colours.
// * After a Performer node runs, draws what its `ui` dict carries (nodes/_common.py `preview`) under the node:
//     performer_frames  — frames (temp PNGs) played with a scrubber and a play button; IVR refreshes as groups
//     performer_pose    — whole-body keypoints drawn over the frames; click a joint to read its name and confidence
//     performer_metrics — a compact metrics table
// Plain JavaScript against the frontend's extension API; no build step.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const BODY = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
  "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
  "right_ankle", "left_big_toe", "left_small_toe", "left_heel", "right_big_toe", "right_small_toe", "right_heel"];
const LIMBS = [[15, 13], [13, 11], [16, 14], [14, 12], [11, 12], [5, 11], [6, 12], [5, 6], [5, 7], [6, 8], [7, 9],
  [8, 10], [1, 2], [0, 1], [0, 2], [1, 3], [2, 4], [15, 17], [15, 18], [15, 19], [16, 20], [16, 21], [16, 22]];
const HAND = [[0, 1], [1, 2], [2, 3], [3, 4], [0, 5], [5, 6], [6, 7], [7, 8], [0, 9], [9, 10], [10, 11], [11, 12],
  [0, 13], [13, 14], [14, 15], [15, 16], [0, 17], [17, 18], [18, 19], [19, 20]];

// Nodes whose runs send a preview (nodes/_common.py `preview`).  Their preview widget is made when the node is
// created, so the frontend lays it out with the node (a DOM widget added later is not mounted in Vue node mode).
const PREVIEW_TYPES = new Set(["PerformerExtractPoseMediaPipe", "PerformerExtractPoseDWPose", "PerformerExtractPoseOpenPose",
  "PerformerLoadPose", "PerformerPoseFrames", "PerformerFaceCrops", "PerformerCleanPose", "PerformerRetargetPose", "PerformerDrawPose", "PerformerAnimate",
  "PerformerSampleVideo", "PerformerDecode", "PerformerRefineIVR", "PerformerSyntheticPerformer", "PerformerMetrics",
  "PerformerRenderBody", "PerformerChampMaps", "PerformerPoseCrafter", "PerformerRefineIVRNative"]);

export function jointName(i) {
  if (i < 23) return BODY[i];
  if (i < 91) return `face_${i - 23}`;
  if (i < 112) return `left_hand_${i - 91}`;
  return `right_hand_${i - 112}`;
}

function viewUrl(f) {
  const q = new URLSearchParams({ filename: f.filename, subfolder: f.subfolder ?? "", type: f.type ?? "temp" });
  return api.apiURL(`/view?${q.toString()}`);
}

function fmt(v) {
  if (typeof v !== "number") return String(v);
  if (Number.isInteger(v)) return String(v);
  return Math.abs(v) >= 100 ? v.toFixed(1) : Math.abs(v) >= 1 ? v.toFixed(3) : v.toPrecision(3);
}

class Player {
  constructor(node) {
    this.node = node;
    this.frames = [];
    this.images = [];
    this.pose = null;
    this.meta = {};
    this.index = 0;
    this.group = 0;
    this.timer = null;
    const root = (this.root = document.createElement("div"));
    root.className = "performer-preview";
    root.style.cssText = "display:flex;flex-direction:column;gap:4px;width:100%;height:100%;font:11px sans-serif;color:#ddd;";
    this.canvas = document.createElement("canvas");
    this.canvas.className = "performer-canvas";
    this.canvas.style.cssText = "width:100%;flex:1 1 auto;min-height:96px;object-fit:contain;background:#111;cursor:crosshair;";
    this.canvas.addEventListener("click", (e) => this.pick(e));
    const bar = document.createElement("div");
    bar.style.cssText = "display:flex;gap:4px;align-items:center;";
    this.play = document.createElement("button");
    this.play.className = "performer-play";
    this.play.textContent = "▶";
    this.play.title = "Play / pause";
    this.play.addEventListener("click", () => this.toggle());
    this.groupSel = document.createElement("select");
    this.groupSel.className = "performer-group";
    this.groupSel.style.display = "none";
    this.groupSel.addEventListener("change", () => this.setGroup(Number(this.groupSel.value)));
    this.slider = document.createElement("input");
    this.slider.type = "range";
    this.slider.className = "performer-scrubber";
    this.slider.min = "0";
    this.slider.style.flex = "1";
    this.slider.addEventListener("input", () => this.show(Number(this.slider.value)));
    this.label = document.createElement("span");
    this.label.className = "performer-frame-label";
    bar.append(this.play, this.groupSel, this.slider, this.label);
    this.info = document.createElement("div");
    this.info.className = "performer-joint";
    this.info.textContent = "";
    this.metrics = document.createElement("table");
    this.metrics.className = "performer-metrics";
    this.metrics.style.cssText = "border-collapse:collapse;font:11px monospace;";
    root.append(this.canvas, bar, this.info, this.metrics);
    this.canvas.style.display = "none";  // empty until the node has run
    bar.style.display = "none";
    root.dataset.frames = "0";
  }

  update(message) {
    this.stop();
    this.frames = message.performer_frames ?? [];
    this.pose = (message.performer_pose ?? [])[0] ?? null;
    this.meta = (message.performer_meta ?? [])[0] ?? {};
    const m = (message.performer_metrics ?? [])[0];
    this.metrics.replaceChildren();
    if (m) {
      for (const [k, v] of Object.entries(m)) {
        const tr = document.createElement("tr");
        const a = document.createElement("td");
        const b = document.createElement("td");
        a.textContent = k;
        b.textContent = fmt(v);
        b.style.textAlign = "right";
        tr.append(a, b);
        this.metrics.append(tr);
      }
    }
    this.images = this.frames.map((f) => {
      const im = new Image();
      im.onload = () => { if (this.images[this.index] === im) this.draw(); };
      im.src = viewUrl(f);
      return im;
    });
    const groups = this.meta.groups ?? [];
    this.groupSel.replaceChildren();
    this.groupSel.style.display = groups.length > 1 ? "" : "none";
    (this.meta.group_labels ?? []).forEach((l, i) => {
      const o = document.createElement("option");
      o.value = String(i);
      o.textContent = l;
      this.groupSel.append(o);
    });
    const count = this.count();
    const visible = count > 0;
    this.canvas.style.display = visible ? "" : "none";
    this.slider.parentElement.style.display = visible ? "flex" : "none";
    this.root.dataset.frames = String(count);
    this.setGroup(groups.length > 1 ? groups.length - 1 : 0);
  }

  groupRange() {
    const groups = this.meta.groups ?? [];
    if (groups.length < 2) return [0, this.frames.length || (this.pose?.keypoints?.length ?? 0)];
    const start = groups.slice(0, this.group).reduce((a, b) => a + b, 0);
    return [start, start + groups[this.group]];
  }

  count() {
    const [a, b] = this.groupRange();
    return b - a;
  }

  setGroup(g) {
    this.group = g;
    this.groupSel.value = String(g);
    this.slider.max = String(Math.max(0, this.count() - 1));
    this.show(0);
  }

  show(i) {
    const n = this.count();
    this.index = n ? Math.max(0, Math.min(n - 1, i)) : 0;
    this.slider.value = String(this.index);
    this.label.textContent = n ? `${this.index + 1}/${n}` : "";
    this.root.dataset.frame = String(this.index);
    this.draw();
  }

  toggle() {
    if (this.timer) return this.stop();
    const fps = Math.max(1, Math.min(60, this.meta.fps || 8));
    this.play.textContent = "❚❚";
    this.timer = setInterval(() => this.show((this.index + 1) % Math.max(1, this.count())), 1000 / fps);
  }

  stop() {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.play.textContent = "▶";
  }

  frameSize() {
    const im = this.images[this.groupRange()[0] + this.index];
    if (im?.naturalWidth) return [im.naturalWidth, im.naturalHeight];
    if (this.pose) {
      const s = 256 / Math.max(this.pose.width, this.pose.height);
      return [Math.round(this.pose.width * s), Math.round(this.pose.height * s)];
    }
    return [256, 256];
  }

  keypoints() {
    const k = this.pose?.keypoints;
    if (!k?.length) return null;
    return k[Math.min(this.index, k.length - 1)];
  }

  draw() {
    const [w, h] = this.frameSize();
    const c = this.canvas;
    if (c.width !== w || c.height !== h) { c.width = w; c.height = h; }
    const ctx = c.getContext("2d");
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, w, h);
    const im = this.images[this.groupRange()[0] + this.index];
    if (im?.complete && im.naturalWidth) ctx.drawImage(im, 0, 0, w, h);
    const kp = this.keypoints();
    if (!kp) return;
    const sx = w / this.pose.width, sy = h / this.pose.height;
    const ok = (i) => kp[i] && kp[i][2] > 0.05;
    const line = (a, b, col) => {
      if (!ok(a) || !ok(b)) return;
      ctx.strokeStyle = col;
      ctx.beginPath();
      ctx.moveTo(kp[a][0] * sx, kp[a][1] * sy);
      ctx.lineTo(kp[b][0] * sx, kp[b][1] * sy);
      ctx.stroke();
    };
    ctx.lineWidth = Math.max(1, w / 160);
    LIMBS.forEach(([a, b], i) => line(a, b, `hsl(${(i * 360) / LIMBS.length},90%,55%)`));
    for (const base of [91, 112]) HAND.forEach(([a, b]) => line(base + a, base + b, "#6cf"));
    for (let i = 0; i < kp.length; i++) {
      if (!ok(i)) continue;
      ctx.fillStyle = i >= 23 && i < 91 ? "#fff" : "#f44";
      const r = i < 23 ? Math.max(2, w / 110) : Math.max(1, w / 220);
      ctx.beginPath();
      ctx.arc(kp[i][0] * sx, kp[i][1] * sy, r, 0, 2 * Math.PI);
      ctx.fill();
    }
    if (this.picked != null && ok(this.picked)) {
      ctx.strokeStyle = "#ff0";
      ctx.lineWidth = 2;
      ctx.beginPath();
      ctx.arc(kp[this.picked][0] * sx, kp[this.picked][1] * sy, Math.max(4, w / 50), 0, 2 * Math.PI);
      ctx.stroke();
    }
  }

  // Nearest joint to a click (canvas pixels → pose pixels); shows its name, position and confidence.
  pick(e) {
    const kp = this.keypoints();
    if (!kp) return;
    const r = this.canvas.getBoundingClientRect();
    const x = ((e.clientX - r.left) / r.width) * this.canvas.width;
    const y = ((e.clientY - r.top) / r.height) * this.canvas.height;
    const sx = this.canvas.width / this.pose.width, sy = this.canvas.height / this.pose.height;
    let best = -1, bd = Infinity;
    kp.forEach((p, i) => {
      if (!(p[2] > 0.05)) return;
      const d = Math.hypot(p[0] * sx - x, p[1] * sy - y);
      if (d < bd) { bd = d; best = i; }
    });
    if (best < 0 || bd > Math.max(12, this.canvas.width / 12)) {
      this.picked = null;
      this.info.textContent = "no joint here";
    } else {
      this.picked = best;
      const p = kp[best];
      this.info.textContent = `#${best} ${jointName(best)}: x ${p[0].toFixed(1)}, y ${p[1].toFixed(1)}, confidence ${p[2].toFixed(2)}`;
    }
    this.info.dataset.joint = String(this.picked ?? "");
    this.draw();
  }
}

function attachPlayer(node) {
  if (node.performerPlayer) return node.performerPlayer;
  const p = (node.performerPlayer = new Player(node));
  p.root.dataset.nodeId = String(node.id);
  node.addDOMWidget("performer_preview", "performer-preview", p.root,
    { serialize: false, hideOnZoom: false, getMinHeight: () => (p.count() || p.metrics.rows.length ? 200 : 0) });
  return p;
}

app.registerExtension({
  name: "performer.core",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData?.name?.startsWith("Performer")) return;
    const previews = PREVIEW_TYPES.has(nodeData.name);
    const created = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = created?.apply(this, arguments);
      this.color = this.color ?? "#2a363b";
      this.bgcolor = this.bgcolor ?? "#3f5159";
      if (previews) attachPlayer(this);
      return r;
    };
    const executed = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      const r = executed?.apply(this, arguments);
      if (!message?.performer_meta) return r;
      try {
        attachPlayer(this);
        this.performerPlayer.root.dataset.nodeId = String(this.id);
        this.performerPlayer.update(message);
        const [w, h] = this.size;
        this.setSize([Math.max(w, 280), Math.max(h, this.computeSize()[1])]);
        app.graph?.setDirtyCanvas(true, true);
      } catch (e) {
        console.error(`[ComfyUI-Performer] preview of node ${this.id} failed:`, e);
      }
      return r;
    };
  },
});
