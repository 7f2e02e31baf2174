// Validates rendered manifests offline against the Kubernetes and prometheus-operator schemas.
//
//   node validate.mjs RENDERED.json OUT.ts
//
// RENDERED.json: [{name, objects: [...]}] (rendered_checks.py to-json). For every object:
//   1. `new Model(object).validate()` of npm kubernetes-models / @kubernetes-models/
//      prometheus-operator (JSON schema: types, required fields, enums, formats);
//   2. a TypeScript constant typed with the model's interface is written to OUT.ts, for
//      `tsc --strict`: excess-property checks of object literals reject unknown fields, which
//      the JSON schemas accept.
// Run from the directory holding node_modules (BUILD_DIR/k8s-npm). Exit 1 if any object fails.
import { readFileSync, writeFileSync } from "node:fs";

// "apps/v1" -> the module of that group version; core "v1" has no group.
function modulePath(apiVersion, kind) {
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
  if (group === "monitoring.coreos.com") {
    return `@kubernetes-models/prometheus-operator/${group}/${version}/${kind}`;
  }
  return `kubernetes-models/${group ? group + "/" : ""}${version}/${kind}`;
}

const [renderedPath, outPath] = process.argv.slice(2);
if (!renderedPath || !outPath) {
  console.error("usage: node validate.mjs RENDERED.json OUT.ts");
  process.exit(2);
}
const renderings = JSON.parse(readFileSync(renderedPath, "utf8"));
const imports = new Map();
const constants = [];
let failures = 0;
let count = 0;
for (const { name, objects } of renderings) {
  for (const object of objects) {
    const what = `${name}: ${object.kind} ${object.metadata?.name}`;
    const path = modulePath(object.apiVersion, object.kind);
    let Model;
    try {
      Model = (await import(path))[object.kind];
    } catch (e) {
      console.error(`FAIL ${what}: no schema for ${object.apiVersion} (${e.message})`);
      failures++;
      continue;
    }
    try {
      new Model(object).validate();
    } catch (e) {
      console.error(`FAIL ${what}: ${e.message}`);
      failures++;
    }
    const alias = `I${object.kind}_${imports.size}`;
    if (!imports.has(path)) imports.set(path, alias);
    constants.push(`// ${what}\nexport const o${count}: ${imports.get(path)} = ` +
                   `${JSON.stringify(object, null, 1)};\n`);
    count++;
  }
}
const header = [...imports].map(
  ([path, alias]) => `import type { I${path.split("/").pop()} as ${alias} } from "${path}";`);
writeFileSync(outPath, header.join("\n") + "\n\n" + constants.join("\n"));
console.log(`validate.mjs: ${count} objects, ${failures} schema failures; wrote ${outPath}`);
process.exit(failures ? 1 : 0);
