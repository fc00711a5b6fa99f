#!/usr/bin/env node
// @ts-check
/**
 * Installs the system tools the test suite uses, before any test runs: `npm test` runs it (the
 * `pretest` hook) and so does `.ci/run` (with `--ci`, which adds what `npm ci` itself needs), so
 * the two cannot drift.
 *
 * When something is missing: as root with `apt-get`, it is installed (with apt's own progress);
 * otherwise nothing runs and one message names what is missing and the line that installs it
 * (exit code 1). Plain Node, no dependencies: it runs before `npm ci`.
 *
 * For its own tests: `VIBES_PROVISION_PRETEND_MISSING=tmux,sshd` treats those tools as absent, and
 * `VIBES_PROVISION_DRY_RUN=1` prints the install command instead of running it.
 */
import { spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import { fileURLToPath } from "node:url"

/**
 * @typedef {object} Requirement
 * @property {string} name what the tests call it
 * @property {string} why what it is for
 * @property {string} package the Debian package that provides it
 * @property {string} [command] found on PATH
 * @property {string} [file] an executable at this path
 * @property {boolean} [ci] needed only to install the project (`--ci`)
 */

/** @type {ReadonlyArray<Requirement>} */
export const requirements = [
  { name: "g++", command: "g++", package: "g++", why: "builds node-pty", ci: true },
  { name: "make", command: "make", package: "make", why: "builds node-pty", ci: true },
  { name: "python3", command: "python3", package: "python3", why: "node-gyp", ci: true },
  {
    name: "pg_isready",
    command: "pg_isready",
    package: "postgresql-client",
    why: "waits for Postgres",
    ci: true
  },
  {
    name: "unshare",
    command: "unshare",
    package: "util-linux",
    why: "embedded Postgres as root, the sandbox of sessions and jobs"
  },
  { name: "perl", command: "perl", package: "perl-base", why: "the sandbox of sessions and jobs" },
  { name: "tmux", command: "tmux", package: "tmux", why: "the `vibes attach` and screen tests" },
  { name: "tput", command: "tput", package: "ncurses-bin", why: "programs run in sessions" },
  { name: "vim", command: "vim", package: "vim", why: "screen fidelity tests" },
  { name: "less", command: "less", package: "less", why: "screen fidelity tests" },
  { name: "htop", command: "htop", package: "htop", why: "screen fidelity tests" },
  {
    name: "demo_menus",
    file: "/usr/libexec/ncurses-examples/demo_menus",
    package: "ncurses-examples",
    why: "screen fidelity tests"
  },
  { name: "sshd", file: "/usr/sbin/sshd", package: "openssh-server", why: "SSH job tests" },
  { name: "ssh-keygen", command: "ssh-keygen", package: "openssh-client", why: "SSH job tests" },
  { name: "ssh-agent", command: "ssh-agent", package: "openssh-client", why: "SSH job tests" },
  { name: "pgrep", command: "pgrep", package: "procps", why: "process clean-up tests" },
  {
    name: "nats-server",
    file: "/usr/sbin/nats-server",
    package: "nats-server",
    why: "the JetStream event log and its supervisor"
  },
  { name: "curl", command: "curl", package: "curl", why: "the README's curl example" },
  {
    name: "prometheus",
    command: "prometheus",
    package: "prometheus",
    why: "scrapes a node in the monitoring test"
  },
  { name: "promtool", command: "promtool", package: "prometheus", why: "checks the alerting rules" },
  { name: "chromium", file: "/usr/bin/chromium", package: "chromium", why: "web UI browser tests" }
]

/**
 * @typedef {object} Plan
 * @property {ReadonlyArray<Requirement>} missing
 * @property {ReadonlyArray<string>} packages the Debian packages that provide them, once each
 * @property {"none" | "install" | "refuse"} action
 * @property {string} installLine the command a person would run
 */

/**
 * What to do, given which requirements are present and whether this process may install.
 * @param {{ ci: boolean, present: (requirement: Requirement) => boolean, canInstall: boolean, root: boolean }} input
 * @returns {Plan}
 */
export const plan = ({ ci, present, canInstall, root }) => {
  const missing = requirements.filter((r) => (ci || r.ci !== true) && !present(r))
  const packages = [...new Set(missing.map((r) => r.package))]
  const installLine = `${root ? "" : "sudo "}apt-get install -y ${packages.join(" ")}`
  const action = missing.length === 0 ? "none" : canInstall ? "install" : "refuse"
  return { missing, packages, action, installLine }
}

/** @param {string} command */
const onPath = (command) =>
  (process.env["PATH"] ?? "")
    .split(path.delimiter)
    .some((dir) => dir !== "" && isExecutable(path.join(dir, command)))

/** @param {string} file */
const isExecutable = (file) => {
  try {
    fs.accessSync(file, fs.constants.X_OK)
    return fs.statSync(file).isFile()
  } catch {
    return false
  }
}

/** @param {ReadonlySet<string>} pretendMissing @returns {(requirement: Requirement) => boolean} */
const presentOnThisMachine = (pretendMissing) => (requirement) => {
  if (pretendMissing.has(requirement.name)) return false
  if (requirement.file !== undefined) return isExecutable(requirement.file)
  return requirement.command !== undefined && onPath(requirement.command)
}

/** @param {ReadonlyArray<Requirement>} missing */
const describe = (missing) =>
  missing.map((r) => `  ${r.name.padEnd(12)} ${r.package.padEnd(18)} ${r.why}`).join("\n")

/** @param {ReadonlyArray<string>} argv @returns {number} the exit code */
const main = (argv) => {
  const unknown = argv.filter((arg) => arg !== "--ci")
  if (argv.includes("--help") || unknown.length > 0) {
    console.error(
      "usage: node scripts/provision.mjs [--ci]\n  installs the system tools the tests use (root + apt-get), or names them"
    )
    return argv.includes("--help") ? 0 : 2
  }
  const ci = argv.includes("--ci")
  const pretend = new Set(
    (process.env["VIBES_PROVISION_PRETEND_MISSING"] ?? "").split(",").filter((name) => name !== "")
  )
  const dryRun = process.env["VIBES_PROVISION_DRY_RUN"] === "1"
  const present = presentOnThisMachine(pretend)
  const root = typeof process.getuid === "function" && process.getuid() === 0
  const apt = onPath("apt-get")
  const decided = plan({ ci, present, canInstall: root && apt, root })
  if (decided.action === "none") return 0

  if (decided.action === "refuse") {
    const how = apt
      ? `Install them with:\n  ${decided.installLine}`
      : `This machine has no apt-get; install the programs above with its package manager (the Debian package names are given).`
    console.error(`vibes tests need system tools that are missing:\n${describe(decided.missing)}\n${how}`)
    return 1
  }

  console.error(
    `vibes tests: installing ${decided.packages.join(" ")} (missing:\n${describe(decided.missing)})`
  )
  if (dryRun) {
    console.error(`dry run: apt-get update && ${decided.installLine}`)
    return 0
  }
  const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" }
  // Another apt may hold the lock (an unattended upgrade): wait for it rather than fail.
  const lock = ["-o", "DPkg::Lock::Timeout=300"]
  for (const args of [
    [...lock, "update", "-q"],
    [...lock, "install", "-y", "-q", ...decided.packages]
  ]) {
    const result = spawnSync("apt-get", args, { stdio: ["ignore", "inherit", "inherit"], env })
    if (result.status !== 0) {
      console.error(
        `vibes tests: \`apt-get ${args.join(" ")}\` failed (exit ${result.status ?? result.signal}); run it yourself and retry`
      )
      return 1
    }
  }
  const still = plan({ ci, present: presentOnThisMachine(new Set()), canInstall: false, root }).missing
  if (still.length > 0) {
    console.error(`vibes tests: still missing after apt-get install:\n${describe(still)}`)
    return 1
  }
  return 0
}

if (process.argv[1] !== undefined && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  process.exitCode = main(process.argv.slice(2))
}
