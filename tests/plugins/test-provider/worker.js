// envrun test provider: a sandbox-provider plugin worker that speaks
// Paperclip's plugin worker protocol (upstream.md Part A) with no
// dependencies, modelled on upstream's fake-plugin (A10 "Reference
// behaviour"). A lease is a temporary directory on this host; commands run
// directly (no shell) in it. For tests only.
//
// Failure modes come from test-behaviour.json next to this file (read once
// at start; absent: normal behaviour):
//   {"initialize": "ok" | "hang" | "fail",
//    "onMethod": {"<method>": "crash" | "hang" | "garbage" | "error" |
//                             "echo" | "echo-crash" | "echo-split" |
//                             "echo-result"},
//    "callLog": "<path>",
//    "nativeSync": true (also offer environmentSyncIn / SyncOut)}
// and per call from params.config.testBehaviour.onMethod (same shape).
// crash: exit 3 mid-call after a line on stderr; hang: never answer;
// garbage: stray stdout lines, then the normal answer; error: a JSON-RPC
// error -32002. The echo modes play a plugin that shows the config it got
// (secrets resolved to plaintext: the host must redact them): echo puts it
// into a `log` notification, a stderr line and the message of a JSON-RPC
// error -32002; echo-crash writes it to stderr and exits 3 (the stderr
// excerpt of the failure); echo-split writes each string member to stderr
// in two writes 100 ms apart, cut in its middle, then answers normally;
// echo-result answers, with the config in what it returns (echoResult).
// The config shows as each string member raw (a multi-line value stays
// multi-line), then all of it as JSON (values escaped). callLog: every
// request received is appended there as one JSON line {pid, method,
// params, paperclipInvocation}.
//
// CommonJS on purpose: it runs with or without its package.json beside it.
"use strict";

const { spawn } = require("node:child_process");
const { randomUUID } = require("node:crypto");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const readline = require("node:readline");

const HERE = __dirname;
const DRIVER_KEY = "test-provider";
const ROOT_PREFIX = "envrun-test-provider-";
const DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin";
const KILL_GRACE_MS = 250;
const NO_ANSWER = Symbol("no answer");

const SUPPORTED_METHODS = [
  "shutdown",
  "health",
  "environmentValidateConfig",
  "environmentProbe",
  "environmentAcquireLease",
  "environmentResumeLease",
  "environmentReleaseLease",
  "environmentDestroyLease",
  "environmentRealizeWorkspace",
  "environmentExecute",
];

function readBehaviour() {
  try {
    const text = fs.readFileSync(path.join(HERE, "test-behaviour.json"), "utf8");
    const parsed = JSON.parse(text);
    return parsed && typeof parsed === "object" ? parsed : {};
  } catch (err) {
    if (err.code !== "ENOENT") {
      process.stderr.write(`test provider: ignoring test-behaviour.json: ${err.message}\n`);
    }
    return {};
  }
}

const behaviour = readBehaviour();

function send(msg) {
  process.stdout.write(JSON.stringify(msg) + "\n");
}

function notify(method, params, extra) {
  send({ jsonrpc: "2.0", method, params, ...extra });
}

function log(level, message) {
  notify("log", { level, message });
}

class RpcError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

// Worker -> host requests (the host answers span.record with null and
// anything else with -32601).
let nextHostId = 1;
const hostPending = new Map();

function callHost(method, params) {
  const id = nextHostId++;
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      hostPending.delete(id);
      resolve({ error: { code: -32003, message: `Worker→host call "${method}" timed out` } });
    }, 5000);
    hostPending.set(id, (msg) => {
      clearTimeout(timer);
      resolve("error" in msg && msg.error ? { error: msg.error } : { result: msg.result ?? null });
    });
    send({ jsonrpc: "2.0", id, method, params });
  });
}

function callLog(method, params, invocation) {
  if (typeof behaviour.callLog !== "string") return;
  const line = { pid: process.pid, method, params, paperclipInvocation: invocation ?? null };
  fs.appendFileSync(behaviour.callLog, JSON.stringify(line) + "\n");
}

function modeFor(method, params) {
  const perCall = params?.config?.testBehaviour?.onMethod?.[method];
  if (typeof perCall === "string") return perCall;
  const fromFile = behaviour.onMethod?.[method];
  return typeof fromFile === "string" ? fromFile : "normal";
}

// Only directories this plugin made are ever deleted.
function isOurRoot(dir) {
  return (
    typeof dir === "string" &&
    path.isAbsolute(dir) &&
    path.dirname(dir) === os.tmpdir() &&
    path.basename(dir).startsWith(ROOT_PREFIX)
  );
}

function removeRoot(dir) {
  if (isOurRoot(dir)) fs.rmSync(dir, { recursive: true, force: true });
}

function validateConfig(params) {
  const config = params.config ?? {};
  if (config.image !== undefined && typeof config.image !== "string") {
    return { ok: false, errors: ["image must be a string."] };
  }
  return {
    ok: true,
    normalizedConfig: {
      image: config.image ?? "test:latest",
      timeoutMs: typeof config.timeoutMs === "number" ? config.timeoutMs : 300000,
      reuseLease: config.reuseLease === true,
    },
  };
}

async function probe() {
  const spanRecord = await callHost("span.record", { name: "test-provider.probe" });
  const configGet = await callHost("config.get", {});
  return {
    ok: true,
    summary: "Test provider probe passed.",
    metadata: {
      pid: process.pid,
      cwd: process.cwd(),
      pluginId: process.env.PAPERCLIP_PLUGIN_ID ?? null,
      envKeys: Object.keys(process.env).sort(),
      nodeEnv: process.env.NODE_ENV ?? null,
      tz: process.env.TZ ?? null,
      hostReplies: { spanRecord, configGet },
    },
  };
}

function acquireLease(params) {
  const config = params.config ?? {};
  const reuseLease = config.reuseLease === true;
  const image = typeof config.image === "string" ? config.image : "test:latest";
  const root = fs.mkdtempSync(path.join(os.tmpdir(), ROOT_PREFIX));
  fs.mkdirSync(path.join(root, "workspace"));
  const lease = {
    providerLeaseId: reuseLease
      ? `${DRIVER_KEY}://${params.environmentId}`
      : `${DRIVER_KEY}://${params.runId}/${randomUUID()}`,
    metadata: {
      provider: DRIVER_KEY,
      image,
      reuseLease,
      remoteCwd: path.join(root, "workspace"),
      fakeRootDir: root,
      resumedLease: false,
    },
  };
  if (typeof params.requestedExpiresAt === "string") lease.expiresAt = params.requestedExpiresAt;
  return lease;
}

function resumeLease(params) {
  const meta = params.leaseMetadata ?? {};
  if (!isOurRoot(meta.fakeRootDir) || !fs.existsSync(meta.fakeRootDir)) {
    return { providerLeaseId: null, metadata: { expired: true } };
  }
  return {
    providerLeaseId: params.providerLeaseId,
    metadata: { ...meta, resumedLease: true },
  };
}

function releaseLease(params) {
  const meta = params.leaseMetadata ?? {};
  const reuse = meta.reuseLease === true || params.config?.reuseLease === true;
  if (!reuse) removeRoot(meta.fakeRootDir);
  return null;
}

function destroyLease(params) {
  removeRoot(params.leaseMetadata?.fakeRootDir);
  return null;
}

function realizeWorkspace(params) {
  const meta = params.lease?.metadata ?? {};
  let cwd = typeof meta.remoteCwd === "string" && meta.remoteCwd.trim() ? meta.remoteCwd : "";
  if (!cwd && typeof params.workspace?.remotePath === "string") cwd = params.workspace.remotePath;
  if (!cwd && typeof meta.fakeRootDir === "string") cwd = path.join(meta.fakeRootDir, "workspace");
  if (!cwd) throw new Error("test provider lease has no remoteCwd");
  fs.mkdirSync(cwd, { recursive: true });
  return { cwd, metadata: { provider: DRIVER_KEY, remoteCwd: cwd } };
}

// Native file sync (A10): each directory operation copies sourcePath into
// targetPath, leaving out what its exclude list names (a name, or a
// "prefix*" pattern) at any depth.
function isExcluded(name, exclude) {
  return exclude.some((pat) =>
    pat.endsWith("*") ? name.startsWith(pat.slice(0, -1)) : name === pat,
  );
}

function copyTree(src, dst, exclude, counts) {
  fs.mkdirSync(dst, { recursive: true });
  for (const entry of fs.readdirSync(src, { withFileTypes: true })) {
    if (isExcluded(entry.name, exclude)) continue;
    const from = path.join(src, entry.name);
    const to = path.join(dst, entry.name);
    if (entry.isDirectory()) {
      copyTree(from, to, exclude, counts);
    } else if (entry.isFile()) {
      fs.copyFileSync(from, to);
      counts.files += 1;
      counts.bytes += fs.statSync(from).size;
    }
  }
}

function syncIn(params) {
  const operations = Array.isArray(params.operations) ? params.operations : [];
  return {
    operations: operations.map((op) => {
      const counts = { files: 0, bytes: 0 };
      for (const file of Array.isArray(op.files) ? op.files : []) {
        const exclude = Array.isArray(file.exclude) ? file.exclude.map(String) : [];
        if (file.kind === "directory") copyTree(file.sourcePath, file.targetPath, exclude, counts);
        else throw new Error(`test provider: cannot sync a ${file.kind}`);
      }
      return { operationId: op.operationId, filesTransferred: counts.files, bytesTransferred: counts.bytes };
    }),
  };
}

function execute(params, invocationId) {
  if (!params.lease?.providerLeaseId) {
    return {
      exitCode: 1,
      signal: null,
      timedOut: false,
      stdout: "",
      stderr: "No provider lease ID available for execution.",
    };
  }
  const env = params.env && typeof params.env === "object" ? { ...params.env } : {};
  if (!env.PATH) env.PATH = DEFAULT_PATH;
  const args = Array.isArray(params.args) ? params.args.map(String) : [];
  const cwd = params.cwd || params.lease?.metadata?.remoteCwd || undefined;
  const timeoutMs = typeof params.timeoutMs === "number" && params.timeoutMs > 0 ? params.timeoutMs : 0;
  const startedAt = new Date().toISOString();
  const stream = (name, chunk) => {
    if (invocationId) {
      notify("execute.log", { stream: name, chunk }, { paperclipInvocationId: invocationId });
    }
  };
  return new Promise((resolve, reject) => {
    let settled = false;
    let stdout = "";
    let stderr = "";
    let timedOut = false;
    let timer = null;
    let killTimer = null;
    const finish = (fn, value) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      clearTimeout(killTimer);
      fn(value);
    };
    const child = spawn(params.command, args, { cwd, env, stdio: ["pipe", "pipe", "pipe"] });
    child.stdout.setEncoding("utf8");
    child.stderr.setEncoding("utf8");
    child.stdout.on("data", (chunk) => {
      stdout += chunk;
      stream("stdout", chunk);
    });
    child.stderr.on("data", (chunk) => {
      stderr += chunk;
      stream("stderr", chunk);
    });
    child.on("error", (err) => finish(reject, err));
    child.on("close", (code, signal) =>
      finish(resolve, {
        exitCode: timedOut ? null : code,
        signal: signal ?? null,
        timedOut,
        stdout,
        stderr,
        metadata: { startedAt, commandLine: [params.command, ...args].join(" ") },
      }),
    );
    if (timeoutMs > 0) {
      timer = setTimeout(() => {
        timedOut = true;
        child.kill("SIGTERM");
        killTimer = setTimeout(() => child.kill("SIGKILL"), KILL_GRACE_MS);
      }, timeoutMs);
    }
    child.stdin.on("error", () => {}); // EPIPE: the command did not read
    child.stdin.end(typeof params.stdin === "string" ? params.stdin : undefined);
  });
}

const handlers = {
  health: () => ({ status: "ok" }),
  environmentValidateConfig: validateConfig,
  environmentProbe: probe,
  environmentAcquireLease: acquireLease,
  environmentResumeLease: resumeLease,
  environmentReleaseLease: releaseLease,
  environmentDestroyLease: destroyLease,
  environmentRealizeWorkspace: realizeWorkspace,
  environmentExecute: execute,
  environmentSyncIn: syncIn,
  environmentSyncOut: () => ({ operations: [] }),
};

let initialized = false;

function initialize() {
  const mode = behaviour.initialize ?? "ok";
  if (mode === "hang") return NO_ANSWER;
  if (mode === "fail") return { ok: false };
  if (initialized) throw new RpcError(-32002, "Worker already initialized");
  initialized = true;
  log("info", "test provider plugin ready");
  const methods = behaviour.nativeSync === true
    ? [...SUPPORTED_METHODS, "environmentSyncIn", "environmentSyncOut"]
    : SUPPORTED_METHODS;
  return { ok: true, supportedMethods: methods };
}

// The config as a plugin that echoes it shows it.
function echoText(config) {
  const raw = Object.entries(config)
    .filter(([, v]) => typeof v === "string")
    .map(([k, v]) => `${k}=${v}`)
    .join(" ");
  return `${raw} config=${JSON.stringify(config)}`;
}

// echo-result: the call succeeds, and what it returns shows the config: an
// acquire's metadata (top level and nested), an execute of a command
// mentioning "echo-me" fails with it on stdout and stderr.
function echoResult(method, params, result) {
  const text = echoText(params.config ?? {});
  if (method === "environmentAcquireLease") {
    return { ...result, metadata: { ...(result.metadata ?? {}), echoed: text, nested: { deep: [text] } } };
  }
  if (method === "environmentExecute" && JSON.stringify(params.args ?? []).includes("echo-me")) {
    return { ...result, exitCode: 1, stdout: `out ${text}\n`, stderr: `err ${text}\n` };
  }
  return result;
}

async function echoSplit(method, config) {
  for (const [k, v] of Object.entries(config)) {
    if (typeof v !== "string") continue;
    const half = Math.floor(v.length / 2);
    process.stderr.write(`test provider: ${method} split ${k}=${v.slice(0, half)}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
    process.stderr.write(`${v.slice(half)} end\n`);
  }
}

function writeGarbage() {
  process.stdout.write("this is not json\n");
  process.stdout.write('{"jsonrpc":"1.0","id":1,"result":{}}\n');
  process.stdout.write("[1,2,3]\n");
  process.stdout.write("   \n");
  process.stdout.write("{broken\r\n");
  process.stdout.write('{"jsonrpc":"2.0","id":987654321,"result":null}\n');
  process.stdout.write('{"jsonrpc":"2.0","method":"streams.emit","params":{}}\r\n');
}

async function handle(msg) {
  const method = msg.method;
  const params = msg.params ?? {};
  const invocationId = msg.paperclipInvocation?.id;
  callLog(method, params, msg.paperclipInvocation);
  if (method === "initialize") return initialize();
  if (method === "shutdown") {
    setImmediate(() => process.exit(0));
    return null;
  }
  const handler = handlers[method];
  if (!handler) throw new RpcError(-32601, `Unknown method: ${method}`);
  if (method.startsWith("environmentSync") && behaviour.nativeSync !== true) {
    throw new RpcError(-32004, `${method} is not implemented by this plugin`);
  }
  switch (modeFor(method, params)) {
    case "crash":
      process.stderr.write(`test provider: crashing in ${method} on purpose\n`);
      process.exit(3);
      break;
    case "hang":
      return NO_ANSWER;
    case "garbage":
      writeGarbage();
      break;
    case "error":
      throw new RpcError(-32002, `test provider: ${method} failed on purpose`);
    case "echo": {
      const text = echoText(params.config ?? {});
      log("warn", `test provider: ${method} echoes ${text}`);
      process.stderr.write(`test provider: ${method} echoes ${text}\n`);
      throw new RpcError(-32002, `test provider: ${method} failed on purpose: ${text}`);
    }
    case "echo-crash":
      process.stderr.write(`test provider: crashing in ${method}: ${echoText(params.config ?? {})}\n`);
      process.exit(3);
      break;
    case "echo-split":
      await echoSplit(method, params.config ?? {});
      break;
    case "echo-result":
      return echoResult(method, params, await handler(params, invocationId));
    default:
      break;
  }
  return handler(params, invocationId);
}

function onLine(line) {
  if (!line.trim()) return;
  let msg;
  try {
    msg = JSON.parse(line);
  } catch (err) {
    send({ jsonrpc: "2.0", id: null, error: { code: -32700, message: `Parse error: ${err.message}` } });
    return;
  }
  if (!msg || typeof msg !== "object" || msg.jsonrpc !== "2.0") {
    send({ jsonrpc: "2.0", id: null, error: { code: -32700, message: "Parse error: not JSON-RPC 2.0" } });
    return;
  }
  if ("id" in msg && ("result" in msg || "error" in msg) && typeof msg.method !== "string") {
    const resolve = hostPending.get(msg.id);
    if (resolve) {
      hostPending.delete(msg.id);
      resolve(msg);
    }
    return;
  }
  if (typeof msg.method !== "string" || msg.id === undefined || msg.id === null) return;
  Promise.resolve()
    .then(() => handle(msg))
    .then(
      (result) => {
        if (result !== NO_ANSWER) send({ jsonrpc: "2.0", id: msg.id, result: result ?? null });
      },
      (err) => {
        const code = typeof err?.code === "number" ? err.code : -32002;
        send({ jsonrpc: "2.0", id: msg.id, error: { code, message: String(err?.message ?? err) } });
      },
    );
}

const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
rl.on("line", onLine);
rl.on("close", () => process.exit(0));
