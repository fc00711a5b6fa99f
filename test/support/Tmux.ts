/** A private tmux server to run interactive CLI commands (`vibes attach`) in, and read its screen. */
import * as childProcess from "node:child_process"
import * as crypto from "node:crypto"
import { Effect, Option } from "effect"
import { eventually } from "./Attach.js"

/** A tmux server of its own with one 100x30 pane running /bin/sh; killed with the scope. */
export const make = Effect.acquireRelease(
  Effect.sync(() => {
    const socket = `vibes-test-${crypto.randomBytes(4).toString("hex")}`
    const run = (...args: ReadonlyArray<string>) =>
      childProcess.execFileSync("tmux", ["-L", socket, "-f", "/dev/null", ...args], { encoding: "utf8" })
    run("new-session", "-d", "-s", "t", "-x", "100", "-y", "30", "/bin/sh")
    return {
      keys: (...keys: ReadonlyArray<string>) => Effect.sync(() => run("send-keys", "-t", "t", ...keys)),
      pane: () => run("capture-pane", "-p", "-t", "t"),
      kill: () => run("kill-server")
    }
  }),
  (session) => Effect.sync(() => session.kill())
)

/** Waits until the pane shows `text`; the error has the pane's last screen. */
export const paneShows = (pane: () => string, text: string | RegExp | ((screen: string) => boolean)) => {
  let last = ""
  return eventually(
    Effect.sync(() => {
      last = pane()
      const shown =
        typeof text === "string" ? last.includes(text) : text instanceof RegExp ? text.test(last) : text(last)
      return shown ? Option.some(last) : Option.none()
    }),
    `the pane to show ${String(text)}`,
    30_000
  ).pipe(Effect.mapError((error) => new Error(`${error.message}; the pane shows:\n${last}`)))
}
