/**
 * Node-wide settings of terminal sessions: defaults for new sessions and how history is kept.
 */
import * as os from "node:os"
import { Context, Duration, Effect, Layer } from "effect"
import * as ChildEnv from "../../infra/sandbox/ChildEnv.js"

/** Settings every session entity of this node shares. */
export class SessionSettings extends Context.Tag("vibes/SessionSettings")<
  SessionSettings,
  {
    /** The node whose PTY host holds the sessions it creates. */
    readonly nodeId: string
    /** Program of a session created without one. */
    readonly shell: string
    /** Working directory of a session created without one. */
    readonly home: string
    /** Environment every session starts from (the request's env is added on top). */
    readonly env: Readonly<Record<string, string>>
    /** Lines of scrollback the screen model keeps. */
    readonly scrollback: number
    /** Output after which a `session.snapshot` is recorded. */
    readonly snapshotEvery: number
    /** Quiet time after which a session counts as idle (waiting for input). */
    readonly idleAfter: Duration.Duration
    /**
     * Variables that point the session's agents at this node's AI-provider proxy, with the
     * session's own token (added over `env`, under the request's own variables). The token works from
     * then on (also for a session resumed after a restart) until `proxyEnded`.
     */
    readonly proxyEnv: (sessionId: string) => Effect.Effect<Record<string, string>>
    /** The session's program has ended: its proxy token stops working. */
    readonly proxyEnded: (sessionId: string) => Effect.Effect<void>
    /** The argv prefix programs start through (the sandbox's), empty for none. */
    readonly wrapper: ReadonlyArray<string>
  }
>() {}

/** The environment of a new session: the server's, minus its secrets, with a capable TERM. */
export const sessionEnv = (
  secrets: ChildEnv.Secrets = ChildEnv.secrets({ values: [] }),
  env: NodeJS.ProcessEnv = process.env
): Record<string, string> => ({
  ...ChildEnv.childEnv(secrets, env),
  TERM: "xterm-256color",
  COLORTERM: "truecolor"
})

/** The user's login shell, from `$SHELL` or the password database. */
export const defaultShell = (): string => {
  const fromEnv = process.env.SHELL
  if (fromEnv !== undefined && fromEnv !== "") return fromEnv
  const fromPasswd = os.userInfo().shell
  return fromPasswd !== null && fromPasswd !== "" ? fromPasswd : "/bin/sh"
}

/** Settings with the defaults for `nodeId`; `overrides` win. */
export const layer = (
  nodeId: string,
  overrides: Partial<Omit<SessionSettings["Type"], "nodeId">> = {}
): Layer.Layer<SessionSettings> =>
  Layer.succeed(SessionSettings, {
    nodeId,
    shell: defaultShell(),
    home: os.homedir(),
    env: sessionEnv(),
    scrollback: 10_000,
    snapshotEvery: 1024 * 1024,
    idleAfter: Duration.seconds(5),
    proxyEnv: () => Effect.succeed({}),
    proxyEnded: () => Effect.void,
    wrapper: [],
    ...overrides
  })
