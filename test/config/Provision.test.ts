/**
 * The test command's provisioning (`scripts/provision.mjs`, run by `npm test` and `.ci/run`):
 * what it decides, and what it does on this machine as root and as an ordinary user.
 */
import { describe, expect, it } from "@effect/vitest"
import { spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { plan, requirements } from "../../scripts/provision.mjs"

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..")
const script = path.join(root, "scripts", "provision.mjs")

const isRoot = process.getuid?.() === 0

/**
 * Runs `command` with extra environment, as this user or as an ordinary one: `nobody` (via
 * setpriv) when the suite runs as root, else this user, who is one.
 */
const run = (ordinary: boolean, command: ReadonlyArray<string>, env: Record<string, string>) => {
  const asNobody = ordinary && isRoot
  const home = fs.mkdtempSync(path.join(os.tmpdir(), "vibes-provision-"))
  fs.chmodSync(home, 0o777)
  try {
    const [file, ...args] = asNobody
      ? ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", ...command]
      : command
    const result = spawnSync(file ?? "", args, {
      cwd: root,
      encoding: "utf8",
      env: { ...process.env, HOME: home, ...env },
      timeout: 60_000
    })
    return { status: result.status, stderr: result.stderr, stdout: result.stdout }
  } finally {
    fs.rmSync(home, { recursive: true, force: true })
  }
}

describe("provisioning: the plan", () => {
  const allPresent = () => true
  const absent =
    (...names: Array<string>) =>
    (r: { readonly name: string }) =>
      !names.includes(r.name)

  it("nothing to do when every tool is present", () => {
    const decided = plan({ ci: true, present: allPresent, canInstall: true, root: true })
    expect(decided.action).toBe("none")
    expect(decided.missing).toEqual([])
  })

  it("installs what is missing as root with apt-get, each package once", () => {
    const decided = plan({
      ci: false,
      present: absent("ssh-keygen", "ssh-agent", "chromium", "tput"),
      canInstall: true,
      root: true
    })
    expect(decided.action).toBe("install")
    expect(decided.packages).toEqual(["ncurses-bin", "openssh-client", "chromium"])
    expect(decided.installLine).toBe("apt-get install -y ncurses-bin openssh-client chromium")
  })

  it("refuses, with the exact line, when it may not install", () => {
    const decided = plan({ ci: false, present: absent("sshd", "tmux"), canInstall: false, root: false })
    expect(decided.action).toBe("refuse")
    expect(decided.installLine).toBe("sudo apt-get install -y tmux openssh-server")
  })

  it("what only installing the project needs (a compiler) is checked only with --ci", () => {
    expect(plan({ ci: false, present: absent("g++"), canInstall: true, root: true }).action).toBe("none")
    expect(plan({ ci: true, present: absent("g++"), canInstall: true, root: true }).packages).toEqual(["g++"])
  })

  it("names every tool the suite starts (sshd, tmux, tput, Chromium, the screen programs, nats-server)", () => {
    const names = requirements.map((r) => r.name)
    for (const name of [
      "sshd",
      "tmux",
      "tput",
      "chromium",
      "vim",
      "less",
      "htop",
      "demo_menus",
      "ssh-agent",
      "nats-server"
    ]) {
      expect(names).toContain(name)
    }
  })
})

describe("provisioning: on this machine", () => {
  it("every tool the suite uses is here now (the test command provisioned it)", () => {
    const result = run(false, ["node", script], {})
    expect(result.stderr).toBe("")
    expect(result.status).toBe(0)
  })

  it("with tools missing: as root it installs them (dry run prints the line), else it names them", () => {
    const result = run(false, ["node", script], {
      VIBES_PROVISION_PRETEND_MISSING: "tmux,sshd,chromium",
      VIBES_PROVISION_DRY_RUN: "1"
    })
    if (isRoot) {
      expect(result.status).toBe(0)
      expect(result.stderr).toContain(
        "dry run: apt-get update && apt-get install -y tmux openssh-server chromium"
      )
    } else {
      expect(result.status).toBe(1)
      expect(result.stderr).toContain("sudo apt-get install -y tmux openssh-server chromium")
    }
  })

  it("as an ordinary user with the tools present: passes", () => {
    const result = run(true, ["node", script], {})
    expect(result.stderr).toBe("")
    expect(result.status).toBe(0)
  })

  it("as an ordinary user with tools missing: `npm test` stops before any test with the install line", () => {
    const result = run(true, ["npm", "test", "--", "--reporter=dot"], {
      VIBES_PROVISION_PRETEND_MISSING: "tmux,sshd"
    })
    expect(result.status).toBe(1)
    expect(result.stderr).toContain("vibes tests need system tools that are missing:")
    expect(result.stderr).toContain("sudo apt-get install -y tmux openssh-server")
    // vitest never started.
    expect(result.stdout).not.toContain("RUN")
    expect(result.stdout + result.stderr).not.toContain("Test Files")
  })
})
