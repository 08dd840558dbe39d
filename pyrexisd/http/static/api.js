// The API's page: /openapi.json rendered as a list of operations (no third-party viewer,
// so the page works offline and runs no code from elsewhere on the daemon's origin).
"use strict";

const el = (tag, props = {}, ...children) => {
  const node = document.createElement(tag);
  Object.assign(node, props);
  for (const child of children) node.append(child);
  return node;
};

function resolve(doc, schema) {
  if (schema && schema.$ref) return doc.components.schemas[schema.$ref.split("/").pop()] || schema;
  return schema;
}

function operation(doc, method, path, op) {
  const section = el("section", { id: op.operationId || `${method}-${path}` },
    el("h2", {}, el("code", { textContent: `${method.toUpperCase()} ${path}` }), " ",
      el("span", { className: "muted", textContent: op.summary || "" })));
  if (op.description) section.append(el("p", { textContent: op.description }));
  const params = op.parameters || [];
  if (params.length) {
    section.append(el("table", {}, el("thead", {}, el("tr", {}, ...["parameter", "in", "type", "required", "description"]
      .map((h) => el("th", { textContent: h })))), el("tbody", {}, ...params.map((p) => {
      const schema = resolve(doc, p.schema) || {};
      const type = schema.type || (schema.anyOf || []).map((s) => s.type || "").filter(Boolean).join(" | ");
      return el("tr", {}, el("td", {}, el("code", { textContent: p.name })), el("td", { textContent: p.in }),
        el("td", { textContent: type + (schema.default !== undefined ? ` (default ${JSON.stringify(schema.default)})` : "") }),
        el("td", { textContent: p.required ? "yes" : "" }), el("td", { textContent: p.description || schema.description || "" }));
    }))));
  }
  const body = op.requestBody && op.requestBody.content && op.requestBody.content["application/json"];
  if (body) {
    section.append(el("h3", { textContent: "JSON body" }),
      el("pre", { className: "value", textContent: JSON.stringify(resolve(doc, body.schema), null, 2) }));
  }
  const codes = Object.entries(op.responses || {}).map(([code, r]) => `${code} ${r.description || ""}`);
  if (codes.length) section.append(el("p", { className: "muted", textContent: `Answers: ${codes.join(" · ")}` }));
  return section;
}

async function start() {
  const main = document.querySelector("#api");
  try {
    const response = await fetch("/openapi.json");
    const doc = await response.json();
    main.replaceChildren(el("h1", { textContent: `${doc.info.title} ${doc.info.version}` }),
      el("p", { textContent: doc.info.description || "" }));
    for (const [path, item] of Object.entries(doc.paths)) {
      for (const [method, op] of Object.entries(item)) main.append(operation(doc, method, path, op));
    }
  } catch (error) {
    main.replaceChildren(el("p", { textContent: `Cannot read /openapi.json: ${error}` }));
  }
}

start();
