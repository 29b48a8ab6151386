// Validates an AsyncAPI document with the AsyncAPI project's own parser,
// offline: the document has no remote $ref, and none is fetched. Exits 1 on
// any error (warnings are printed, not fatal).
//   node validate.mjs ../asyncapi.yaml
import { readFile } from 'node:fs/promises';
import { Parser } from '@asyncapi/parser';

const file = process.argv[2];
const parser = new Parser();
const { document, diagnostics } = await parser.parse(await readFile(file, 'utf8'), {
  source: file,
});
const severities = ['error', 'warning', 'info', 'hint'];
let errors = 0;
for (const d of diagnostics) {
  const level = severities[d.severity] ?? d.severity;
  if (d.severity === 0) errors += 1;
  if (d.severity <= 1) {
    console.log(`${level}: ${d.message} at ${d.path.join('.')}`);
  }
}
if (errors > 0 || !document) {
  console.log(`${file}: ${errors} error(s)`);
  process.exit(1);
}
const channels = document.channels().all().map((c) => c.address());
const messages = document.messages().all().map((m) => m.name());
console.log(`${file}: valid AsyncAPI ${document.version()}; channels ${channels.join(', ')}; messages ${messages.join(', ')}`);
