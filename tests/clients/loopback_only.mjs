// Preloaded into the client under test (NODE_OPTIONS="--import=<this file>"): it may talk to
// 127.0.0.1 / localhost / ::1 only. Anything else (e.g. the Continue CLI's version check,
// https://api.continue.dev/cn/info, which it fetches on start-up whatever its settings say)
// fails at once, without a DNS lookup, and is written to $LOOPBACK_ONLY_LOG, one line each.
import dns from "node:dns";
import fs from "node:fs";
import net from "node:net";

const LOOPBACK = new Set(["127.0.0.1", "localhost", "::1", "[::1]", "::ffff:127.0.0.1"]);
const logPath = process.env.LOOPBACK_ONLY_LOG;

function blocked(what) {
  if (logPath) {
    try {
      fs.appendFileSync(logPath, `${process.pid} ${what}\n`);
    } catch {
      // the log is only a help; the block itself is what matters
    }
  }
  const err = new Error(`loopback_only: blocked ${what}`);
  err.code = "ECONNREFUSED";
  return err;
}

// The host of a network URL (http, https, ws, wss), or null for anything else (data:,
// blob:, file: URLs stay on the machine: the Continue CLI loads its layout wasm from a data: URL).
function networkHostOf(input) {
  let url;
  try {
    url = new URL(typeof input === "string" || input instanceof URL ? input : input.url);
  } catch {
    return null; // not a URL: fetch itself rejects it
  }
  return ["http:", "https:", "ws:", "wss:"].includes(url.protocol) ? url.hostname : null;
}

// Say that the guard is in place (a test checks this line, so that it cannot silently stop
// being loaded).
if (logPath) fs.appendFileSync(logPath, `${process.pid} loaded ${process.argv.slice(1, 2).join(" ")}\n`);

const realFetch = globalThis.fetch;
globalThis.fetch = function loopbackFetch(input, init) {
  const host = networkHostOf(input);
  if (host !== null && !LOOPBACK.has(host)) {
    const shown = typeof input === "string" ? input : String(input?.url ?? input);
    return Promise.reject(blocked(`fetch ${shown.slice(0, 200)}`));
  }
  return realFetch(input, init);
};

// Names looked up for http/https/net (and so for every other client library).
const realLookup = dns.lookup;
dns.lookup = function loopbackLookup(hostname, options, callback) {
  if (typeof options === "function") {
    callback = options;
    options = {};
  }
  if (!LOOPBACK.has(hostname)) {
    const err = blocked(`dns.lookup ${hostname}`);
    process.nextTick(callback, err);
    return {};
  }
  return realLookup.call(this, hostname, options, callback);
};
const realPromiseLookup = dns.promises.lookup;
dns.promises.lookup = function loopbackPromiseLookup(hostname, options) {
  if (!LOOPBACK.has(hostname)) return Promise.reject(blocked(`dns.promises.lookup ${hostname}`));
  return realPromiseLookup.call(this, hostname, options);
};

// Sockets to an address given as an IP (no lookup): only loopback ones, and Unix sockets.
const realConnect = net.Socket.prototype.connect;
net.Socket.prototype.connect = function loopbackConnect(...args) {
  const first = args[0];
  const options = Array.isArray(first) ? first[0] : first !== null && typeof first === "object" ? first : null;
  let host;
  if (options) {
    if (options.path) return realConnect.apply(this, args);
    host = options.host ?? "localhost";
  } else if (typeof first === "string" && !/^\d+$/.test(first)) {
    return realConnect.apply(this, args); // a Unix socket path
  } else {
    host = typeof args[1] === "string" ? args[1] : "localhost";
  }
  if (net.isIP(host) && !LOOPBACK.has(host)) {
    const err = blocked(`connect ${host}`);
    process.nextTick(() => this.destroy(err));
    return this;
  }
  return realConnect.apply(this, args);
};
