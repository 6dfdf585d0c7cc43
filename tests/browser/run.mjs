// Drives the real ComfyUI frontend (the comfyui-frontend-package the host serves) in Debian's Chromium through
// playwright-core.  Called by tests/test_browser.py:  node tests/browser/run.mjs CONFIG.json
//
// CONFIG: {url, out, pack, workflows: {name: ui_json}}.  Writes out/results.json with, per workflow: whether it was
// loaded from the template browser, the DOM check of every node and widget, the frontend's own UI→API conversion
// (graphToPrompt) of the template and of the UI file, the run's events, the preview widgets after the run and the
// scrubber / joint-click interaction; plus console errors and every request that tried to leave the machine.
import { chromium } from "playwright-core";
import fs from "fs";
import path from "path";

const cfg = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
fs.mkdirSync(cfg.out, { recursive: true });
const results = { console: [], pageErrors: [], blocked: [], workflows: {}, extension: null, thumbnails: {} };
const save = () => fs.writeFileSync(path.join(cfg.out, "results.json"), JSON.stringify(results, null, 1));

const browser = await chromium.launch({
  executablePath: cfg.chromium || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
  page.setDefaultTimeout(120000);  // clicks and waits on a loaded 2-core machine (a training run beside the tests) take longer than 30 s
  // Offline: anything not on the loopback host is aborted and recorded.
  await page.route("**/*", (route) => {
    const u = new URL(route.request().url());
    if (["127.0.0.1", "localhost"].includes(u.hostname) || u.protocol === "data:" || u.protocol === "blob:") return route.continue();
    results.blocked.push(route.request().url());
    return route.abort();
  });
  page.on("console", (m) => {
    if (m.type() === "error" || m.type() === "warning") {
      results.console.push({ type: m.type(), text: m.text(), url: m.location()?.url ?? "" });
    }
  });
  page.on("pageerror", (e) => results.pageErrors.push({ message: e.message, stack: e.stack ?? "" }));
  results.templateFiles = {};
  page.on("response", (resp) => {
    const m = resp.url().match(/\/api\/workflow_templates\/[^/]+\/([^/?]+)$/);
    if (m) results.templateFiles[decodeURIComponent(m[1])] = resp.status();
  });

  await page.goto(cfg.url);
  await page.waitForFunction(() => window.app?.graph && window.app?.extensionManager && window.app?.api, null, { timeout: 120000 });
  results.extension = await page.evaluate(() => (window.app.extensions ?? []).map((e) => e.name).filter((n) => n.startsWith("performer")));
  // Vue ("Nodes 2.0") rendering: nodes and widgets are DOM elements, so they can be asserted on.
  await page.evaluate(async () => {
    await window.app.extensionManager.setting.set("Comfy.VueNodes.Enabled", true);
    window.__performer = { events: [] };
    // a prompt the server refuses (validation) ends with no execution event: record the refusal
    const api = window.app.api;
    const queue = api.queuePrompt.bind(api);
    api.queuePrompt = async (...a) => {
      try {
        return await queue(...a);
      } catch (e) {
        window.__performer.events.push({ type: "queue_error", detail: { message: String(e?.message ?? e), response: e?.response ?? null } });
        throw e;
      }
    };
    for (const t of ["execution_start", "execution_success", "execution_error", "execution_interrupted", "executed"]) {
      window.app.api.addEventListener(t, (e) => window.__performer.events.push({ type: t, detail: e.detail }));
    }
  });

  // toasts (e.g. the "Prefer the legacy design?" offer) would cover part of the screenshots
  const closeToasts = () => page.locator(".p-toast-close-button").evaluateAll((bs) => bs.forEach((b) => b.click())).catch(() => {});

  const openTemplates = async () => {
    await page.evaluate(() => window.app.extensionManager.command.execute("Comfy.BrowseTemplates"));
    const dialog = page.getByRole("dialog");
    await dialog.getByText(cfg.pack, { exact: true }).first().click();
    return dialog;
  };

  // Thumbnails: every card's image in the pack's section loaded.
  {
    const dialog = await openTemplates();
    await page.waitForTimeout(1500);
    for (const name of Object.keys(cfg.workflows)) {
      const card = dialog.getByTestId(`template-workflow-${name}`);
      await card.scrollIntoViewIfNeeded();
      const img = card.locator("img").first();
      try {
        await img.waitFor({ timeout: 15000 });
        await page.waitForFunction((el) => el.complete && el.naturalWidth > 0, await img.elementHandle(), { timeout: 15000 });
      } catch (e) { /* recorded below as missing */ }
      results.thumbnails[name] = (await img.count())
        ? await img.evaluate((el) => ({ src: el.getAttribute("src"), w: el.naturalWidth, h: el.naturalHeight }))
        : null;
    }
    await page.screenshot({ path: path.join(cfg.out, "template_browser.png") });
    await page.keyboard.press("Escape");
  }

  for (const [name, ui] of Object.entries(cfg.workflows)) {
    const r = (results.workflows[name] = {});
    const t0 = Date.now();
    const dialog = await openTemplates();
    await dialog.getByTestId(`template-workflow-${name}`).click();
    await page.waitForFunction((n) => window.app.graph.nodes.length === n, ui.nodes.length, { timeout: 120000 });
    await page.waitForTimeout(800);
    r.loaded = await page.evaluate(() => window.app.graph.nodes.map((n) => ({ id: n.id, type: n.type })));
    // DOM: every node is rendered with its title and every widget's name.
    r.dom = await page.evaluate(() => window.app.graph.nodes.map((n) => {
      const el = document.querySelector(`[data-node-id="${n.id}"]`);
      const text = el ? el.innerText : "";
      // labelled widgets show their name; text areas show their value; the image-upload button has neither
      const widgets = (n.widgets ?? []).filter((w) => !["control_after_generate", "performer_preview", "upload"].includes(w.name));
      const areas = el ? [...el.querySelectorAll("textarea, input")].map((e) => e.value) : [];
      const shown = (w) => (w.type === "customtext" ? areas.includes(String(w.value)) : text.includes(w.name));
      return { id: n.id, type: n.type, rendered: !!el, title: text.includes(n.title),
               missingWidgets: widgets.filter((w) => !shown(w)).map((w) => w.name) };
    }));
    r.fromTemplate = (await page.evaluate(() => window.app.graphToPrompt())).output;
    await page.evaluate(() => window.app.extensionManager.command.execute("Comfy.Canvas.FitView"));
    // Workflows that name real-size-only models (cfg.noRun, with the reason) are loaded, checked and converted, not queued.
    if ((cfg.noRun ?? []).includes(name)) {
      Object.assign(r, { status: "not_run", executed: [], previewed: [], previews: [] });
    } else {
      // Drop the server's output cache (outputs of earlier identical runs would be reused without "executed" events).
      await page.evaluate(() => window.app.api.fetchApi("/free", { method: "POST", body: JSON.stringify({ free_memory: true }) }));
      await page.waitForTimeout(1500);
      // Queue from the Run button, wait for this prompt's end.
      const before = await page.evaluate(() => window.__performer.events.length);
      await page.getByRole("button", { name: /^Run/ }).first().click();
      await page.waitForFunction((b) => window.__performer.events.slice(b).some((e) =>
        ["execution_success", "execution_error", "execution_interrupted", "queue_error"].includes(e.type)), before, { timeout: cfg.timeout_ms ?? 600000 });
      const events = await page.evaluate((b) => window.__performer.events.slice(b), before);
      const end = events.find((e) => ["execution_success", "execution_error", "execution_interrupted", "queue_error"].includes(e.type));
      r.status = end.type;
      if (end.type !== "execution_success") r.error = end.detail;
      r.executed = events.filter((e) => e.type === "executed").map((e) => String(e.detail?.node));
      r.previewed = events.filter((e) => e.type === "executed" && e.detail?.output?.performer_meta).map((e) => String(e.detail.node));
      await page.waitForTimeout(1500);
      r.previews = await page.evaluate(() => [...document.querySelectorAll(".performer-preview")].map((el) => {
        const c = el.querySelector("canvas");
        return { node: el.dataset.nodeId, frames: Number(el.dataset.frames ?? 0), canvas: c ? [c.width, c.height] : null,
                 visible: !!(el.offsetWidth && el.offsetHeight), metricsRows: el.querySelectorAll(".performer-metrics tr").length };
      }));
    }

    // Interaction on the first preview that carries a pose: scrub to the last frame, click a joint.
    const target = await page.evaluate(() => {
      let best = null;
      for (const n of window.app.graph.nodes) {
        const p = n.performerPlayer;
        if (p?.pose && p.count() > 0 && (!best || p.count() > best.performerPlayer.count())) best = n;
      }
      if (!best) return null;
      window.app.canvas.ds.scale = 1;
      window.app.canvas.centerOnNode(best);
      window.app.canvas.selectNode(best);
      window.app.canvas.setDirty(true, true);
      return best.id;
    });
    if (target != null) {
      const sel = `.performer-preview[data-node-id="${target}"]`;
      await page.waitForTimeout(800);
      const last = await page.evaluate((id) => window.app.graph.getNodeById(id).performerPlayer.count() - 1, target);
      await page.locator(`${sel} .performer-scrubber`).fill(String(last));
      r.scrub = { last, frame: Number(await page.locator(sel).getAttribute("data-frame")) };
      const pt = await page.evaluate((id) => {
        const p = window.app.graph.getNodeById(id).performerPlayer;
        const kp = p.keypoints();
        const i = kp.findIndex((k) => k[2] > 0.05);
        const b = p.canvas.getBoundingClientRect();
        return { i, x: b.left + (kp[i][0] / p.pose.width) * b.width, y: b.top + (kp[i][1] / p.pose.height) * b.height,
                 inView: b.width > 0 && b.height > 0 };
      }, target);
      await page.mouse.click(pt.x, pt.y);
      r.jointClick = { expected: pt.i, shown: await page.locator(`${sel} .performer-joint`).innerText() };
    }
    await page.evaluate(() => {
      window.app.canvas.deselectAll();
      window.app.extensionManager.command.execute("Comfy.Canvas.FitView");
    });
    await closeToasts();
    await page.waitForTimeout(500);
    await closeToasts();  // closing one toast can bring up another
    await page.waitForTimeout(800);
    await page.screenshot({ path: path.join(cfg.out, `${name}.png`) });
    // The frontend's own UI→API conversion of the UI file (loaded directly, not through the template browser).
    await page.evaluate(async (g) => { await window.app.loadGraphData(g); }, ui);
    await page.waitForTimeout(300);
    r.fromFile = (await page.evaluate(() => window.app.graphToPrompt())).output;
    r.seconds = (Date.now() - t0) / 1000;
    save();
  }
} finally {
  save();
  await browser.close();
}
