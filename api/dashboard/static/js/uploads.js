// Upload forms: teacher weights (.safetensors + architecture) and datasets (ImageFolder .zip or .npz).

import { getJSON, upload } from "./api.js";
import { age, errorBox, fill, h, size } from "./ui.js";

const ARCHITECTURES = ["resnet8", "resnet14", "resnet20", "resnet32", "resnet56", "resnet110", "resnet8x4",
  "resnet32x4", "cnn", "resnet18", "resnet34", "mobilenet_v3_small"];

function field(label, input, hint) {
  return h("label", { class: "field" }, h("span", {}, label), input, hint ? h("small", { class: "muted" }, hint) : null);
}

// A form whose submit sends a multipart upload with a progress bar, then shows what the server recorded.
function uploadForm({ id, title, route, inputs, describe, onDone }) {
  const bar = h("progress", { max: 1, value: 0, hidden: true });
  const outcome = h("div", { class: "outcome", role: "status" });
  const button = h("button", { type: "submit" }, "Upload");
  const form = h("form", { class: "card upload", id }, h("h2", {}, title), inputs, h("div", { class: "actions" },
    button, bar), outcome);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    bar.hidden = false;
    bar.value = 0;
    outcome.replaceChildren();
    try {
      const record = await upload(route, new FormData(form), (done) => { bar.value = done; });
      bar.value = 1;
      outcome.replaceChildren(h("p", { class: "ok" }, describe(record)));
      onDone();
    } catch (error) {
      outcome.replaceChildren(errorBox(error));
    } finally {
      button.disabled = false;
    }
  });
  return form;
}

function recordList(title, records, line) {
  return h("section", { class: "card" }, h("h2", {}, title), records.length
    ? h("ul", { class: "records" }, records.map((record) => h("li", {}, h("span", { class: "mono" }, record.id),
      " ", line(record), h("span", { class: "muted small" }, ` · ${size(record.size_bytes)} · ${age(record.created_at)} ago`))))
    : h("p", { class: "muted" }, "None yet."));
}

export function uploadsView(root) {
  const lists = h("div", { class: "results" });
  let stopped = false;
  async function refreshLists() {
    try {
      const [models, datasets] = await Promise.all([getJSON("/v1/models"), getJSON("/v1/datasets")]);
      if (stopped) return;
      lists.replaceChildren(
        recordList("Models", models.items, (m) => `${m.name}: ${m.arch}, ${m.num_classes} classes, ${m.in_channels} ch`),
        recordList("Datasets", datasets.items, (d) => `${d.name}: ${d.kind}, ${d.num_classes} classes, `
          + `${d.num_train} train / ${d.num_test} test`));
    } catch (error) {
      if (!stopped) lists.replaceChildren(errorBox(error));
    }
  }
  const archs = h("datalist", { id: "archs" }, ARCHITECTURES.map((arch) => h("option", { value: arch })));
  const model = uploadForm({
    id: "model-form", title: "Upload teacher weights", route: "/v1/models", onDone: refreshLists,
    inputs: [
      field("Weights (.safetensors, .pt or .pth)", h("input", { type: "file", name: "file",
        accept: ".safetensors,.pt,.pth", required: true }), "a .pt/.pth is read as a state dict, weights only"),
      field("Architecture", h("input", { name: "arch", list: "archs", required: true, placeholder: "resnet20" }),
        "timm/<name> and torchvision/<name> work too"),
      field("Classes", h("input", { name: "num_classes", type: "number", min: 2, placeholder: "from the weights" })),
      field("Input channels", h("select", { name: "in_channels" }, h("option", { value: "" }, "from the weights"),
        h("option", { value: "3" }, "3 (RGB)"), h("option", { value: "1" }, "1 (grey)"))),
      field("Name (optional)", h("input", { name: "name", maxlength: 200 })),
      archs,
    ],
    describe: (m) => `Stored model ${m.id} (${m.arch}). Use it as "teacher": {"arch": "${m.arch}", "weights": "${m.id}"}.`,
  });
  const dataset = uploadForm({
    id: "dataset-form", title: "Upload a dataset", route: "/v1/datasets", onDone: refreshLists,
    inputs: [
      field("ImageFolder .zip or .npz", h("input", { type: "file", name: "file", accept: ".zip,.npz", required: true }),
        "zip: train/<class>/*.png (and optionally val/ or test/<class>/…); npz: x, y (and x_test, y_test)"),
      field("Name (optional)", h("input", { name: "name", maxlength: 200 })),
    ],
    describe: (d) => `Stored dataset ${d.id}: ${d.num_classes} classes, ${d.num_train} training images. `
      + `Use it as "dataset": {"id": "${d.id}"}.`,
  });
  // Optional fields left empty are not sent: the API then uses the file name, or reads the weights.
  for (const form of [model, dataset]) {
    form.addEventListener("formdata", (event) => {
      for (const optional of ["name", "num_classes", "in_channels"]) {
        if (event.formData.get(optional) === "") event.formData.delete(optional);
      }
    });
  }
  fill(root, h("h1", {}, "Upload"), h("div", { class: "uploads" }, model, dataset), lists);
  refreshLists();
  return () => { stopped = true; };
}
