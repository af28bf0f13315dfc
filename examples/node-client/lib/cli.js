// What the Node.js tools share on the command line: flag parsing, usage errors, the token file
// and Node's warnings. One copy, so client.js and edge.js accept flags the same way.
"use strict";

const fs = require("fs");

class UsageError extends Error {}

// grpc-js passes an IP target (127.0.0.1:50051) to TLS as the server name, and Node warns that
// RFC 6066 forbids that on every run. Certificates with IP SANs still verify; keep other warnings.
function quietIpServerNameWarning(prog) {
  process.removeAllListeners("warning");
  process.on("warning", (w) => {
    if (w.code !== "DEP0123") console.error(`${prog}: ${w.name}: ${w.message}`);
  });
}

// `--flag VALUE` or `--flag=VALUE` for each flag in `valued` (flag -> option name), `--json`,
// and `-h`/`--help` (prints `usage`, exits 0). Anything else is a UsageError. A flag whose
// default is an array may be repeated: each value is appended.
function parseFlags(argv, valued, defaults, usage) {
  const opts = { ...defaults, json: false };
  for (let i = 0; i < argv.length; i++) {
    let arg = argv[i];
    let value;
    const eq = arg.indexOf("=");
    if (arg.startsWith("--") && eq > 0) {
      value = arg.slice(eq + 1);
      arg = arg.slice(0, eq);
    }
    if (arg === "-h" || arg === "--help") {
      console.log(usage);
      process.exit(0);
    } else if (arg === "--json") {
      opts.json = true;
    } else if (arg in valued) {
      if (value === undefined) {
        if (i + 1 >= argv.length) throw new UsageError(`${arg} needs a value`);
        value = argv[++i];
      }
      if (Array.isArray(opts[valued[arg]])) opts[valued[arg]] = [...opts[valued[arg]], value];
      else opts[valued[arg]] = value;
    } else {
      throw new UsageError(`unknown argument ${arg}`);
    }
  }
  if (Boolean(opts.tlsCert) !== Boolean(opts.tlsKey)) {
    throw new UsageError("--tls-cert and --tls-key go together");
  }
  return opts;
}

// The connection flags both tools take (security and protos), as parseFlags' `valued`.
const CONNECTION_FLAGS = {
  "--server": "server", "--timeout": "timeout", "--auth-token-file": "authTokenFile",
  "--tls-ca": "tlsCa", "--tls-cert": "tlsCert", "--tls-key": "tlsKey",
  "--tls-server-name": "tlsServerName", "--protos": "protos", "--request-id": "requestId",
};

// Their lines of --help, the same in both tools.
const CONNECTION_HELP = `  --auth-token-file FILE  send the file's first token as 'authorization: Bearer <token>'
  --tls-ca FILE           PEM CA that signed the server's certificate; turns TLS on
  --tls-cert FILE         PEM client certificate (mTLS), with --tls-key
  --tls-key FILE          PEM private key of --tls-cert
  --tls-server-name NAME  name to check the server's certificate against
  --protos DIR            proto root (default: the repository's protos/)
  --request-id ID         sent as x-request-id metadata (the server logs and echoes it)`;

// Same format as edge-agent's and cloud-server's --auth-token-file: one token per line, blank
// lines and '#' comments ignored; the first one is sent.
function readToken(file) {
  for (const line of fs.readFileSync(file, "utf8").split(/\r?\n/)) {
    const t = line.trim();
    if (t && !t.startsWith("#")) return t;
  }
  throw new UsageError(`${file} holds no token (one per line; '#' starts a comment)`);
}

module.exports = {
  UsageError, quietIpServerNameWarning, parseFlags, CONNECTION_FLAGS, CONNECTION_HELP, readToken,
};
