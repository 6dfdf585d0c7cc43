// ComfyUI-Performer frontend extension (served at /extensions/ComfyUI-Performer/js/performer.js).
// Richer pose/video previews arrive with the browser issue; this registers the extension and
// marks Performer nodes so people can spot them on a busy canvas.
import { app } from "../../../scripts/app.js";

app.registerExtension({
  name: "performer.core",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData?.name?.startsWith("Performer")) return;
    const created = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = created?.apply(this, arguments);
      this.color = this.color ?? "#2a363b";
      this.bgcolor = this.bgcolor ?? "#3f5159";
      return r;
    };
  },
});
