#!/usr/bin/env node
// Compile contracts/src with the pinned solc-js and write contracts/artifacts/*.json (committed).
//
//   node contracts/build.mjs            compile and write the artifacts
//   node contracts/build.mjs --check    compile and fail (exit 1) if the committed artifacts differ
//   --modules DIR                       node_modules holding solc and @openzeppelin/contracts
//                                       (default: $BCFL_ETH_NODE_MODULES, else deploy/ethereum/install.sh)
import { createHash } from "node:crypto";
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const srcDir = path.join(here, "src");
const outDir = path.join(here, "artifacts");

// Settings are part of the committed artifacts: changing them changes the bytecode.
const SETTINGS = {
  optimizer: { enabled: true, runs: 200 },
  evmVersion: "cancun",
  metadata: { bytecodeHash: "ipfs" },
  outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object", "metadata"] } },
};

function parseArgs(argv) {
  const args = { check: false, modules: process.env.BCFL_ETH_NODE_MODULES || "" };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--check") args.check = true;
    else if (argv[i] === "--modules") args.modules = argv[++i];
    else {
      console.error(`build.mjs: unknown argument ${argv[i]} (expected --check or --modules DIR)`);
      process.exit(2);
    }
  }
  if (!args.modules) {
    const install = path.join(here, "..", "deploy", "ethereum", "install.sh");
    const out = execFileSync(install, { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] });
    args.modules = path.join(out.trim().split("\n").pop(), "node_modules");
  }
  return args;
}

function compile(modules) {
  const require = createRequire(path.join(modules, "noop.js"));
  const solc = require("solc");
  const sources = {};
  for (const name of readdirSync(srcDir).filter((f) => f.endsWith(".sol")).sort()) {
    sources[`src/${name}`] = { content: readFileSync(path.join(srcDir, name), "utf8") };
  }
  const input = { language: "Solidity", sources, settings: SETTINGS };
  const findImports = (importPath) => {
    if (!importPath.startsWith("@openzeppelin/contracts/")) return { error: `import not allowed: ${importPath}` };
    const file = path.join(modules, importPath);
    return existsSync(file) ? { contents: readFileSync(file, "utf8") } : { error: `not found: ${file}` };
  };
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
  const problems = output.errors || [];
  for (const p of problems) console.error(p.formattedMessage || p.message);
  if (problems.some((p) => p.severity === "error")) {
    console.error("build.mjs: compilation failed");
    process.exit(1);
  }
  const ozVersion = JSON.parse(readFileSync(path.join(modules, "@openzeppelin/contracts/package.json"), "utf8")).version;
  const artifacts = {};
  for (const sourceName of Object.keys(sources)) {
    for (const [contractName, c] of Object.entries(output.contracts[sourceName] || {})) {
      const metadata = JSON.parse(c.metadata);
      const sourceHashes = Object.fromEntries(
        Object.entries(metadata.sources).map(([p, s]) => [p, s.keccak256]).sort(([a], [b]) => a.localeCompare(b)),
      );
      artifacts[contractName] = {
        contractName,
        sourceName,
        compiler: { name: "solc-js", version: solc.version(), settings: SETTINGS, openzeppelin: ozVersion },
        sources: sourceHashes,
        abi: c.abi,
        bytecode: "0x" + c.evm.bytecode.object,
        deployedBytecode: "0x" + c.evm.deployedBytecode.object,
      };
    }
  }
  return artifacts;
}

const args = parseArgs(process.argv.slice(2));
const artifacts = compile(args.modules);
let stale = 0;
mkdirSync(outDir, { recursive: true });
for (const [name, artifact] of Object.entries(artifacts)) {
  const file = path.join(outDir, `${name}.json`);
  const text = JSON.stringify(artifact, null, 2) + "\n";
  const current = existsSync(file) ? readFileSync(file, "utf8") : null;
  if (args.check) {
    if (current !== text) {
      stale++;
      console.error(`build.mjs: ${path.relative(process.cwd(), file)} differs from a fresh compile of the sources ` +
        `(expected sha256 ${createHash("sha256").update(text).digest("hex")}); run: node contracts/build.mjs`);
    }
  } else if (current !== text) {
    writeFileSync(file + ".tmp", text);
    renameSync(file + ".tmp", file);
    console.error(`build.mjs: wrote ${path.relative(process.cwd(), file)}`);
  }
}
if (args.check) {
  const expected = new Set(Object.keys(artifacts).map((n) => `${n}.json`));
  for (const f of readdirSync(outDir).filter((f) => f.endsWith(".json") && !expected.has(f))) {
    stale++;
    console.error(`build.mjs: artifacts/${f} has no source contract; delete it or run: node contracts/build.mjs`);
  }
  if (stale) process.exit(1);
  console.error(`build.mjs: ${Object.keys(artifacts).length} artifacts match the sources`);
}
