/**
 * The `PtyHost` service over the host's sockets: control over its RPC socket (`@effect/rpc`,
 * msgpack), output and input over its data socket (`PtyDataClient`); plus the two calls only a
 * supervisor needs (`PtyHostControl`: ping, shutdown).
 *
 * Reconnection. `RpcClient.layerProtocolSocket` keeps reconnecting in the background for as long
 * as the layer lives, on `retrySchedule`. We leave `retryTransientErrors` off: a failed
 * (re)connect is then reported, so calls in flight and calls made while no host answers fail at
 * once with `PtyHostUnavailable` instead of waiting, unbounded, for a host that may never come
 * back (with it on, a keystroke would hang while the supervisor restarts the host, and a health
 * check could not tell). Once a new host listens, the next attempt connects and calls go through
 * again. The default schedule backs off to 5 s between attempts; a constant 250 ms makes a
 * restarted host reachable at once, and a refused connect on a Unix socket costs next to nothing.
 * A call in flight when the connection drops fails with `PtyHostUnavailable` (it is not resent).
 * The data socket reconnects on its next use; see `PtyDataClient`.
 */
import { Cause, Context, Duration, Effect, Layer, Option, Predicate, Schedule } from "effect"
import * as NodeSocket from "@effect/platform-node/NodeSocket"
import * as Socket from "@effect/platform/Socket"
import * as RpcClient from "@effect/rpc/RpcClient"
import type { RpcClientError } from "@effect/rpc/RpcClientError"
import { PtyHost, PtyHostUnavailable } from "./PtyHost.js"
import * as PtyDataClient from "./PtyDataClient.js"
import { dataSocketPathOf } from "./PtyDataProtocol.js"
import { layerSerialization, type PingResult, PtyHostRpcs } from "./PtyHostRpcs.js"

/** Calls for whoever supervises the host; not part of `PtyHost`. */
export class PtyHostControl extends Context.Tag("vibes/PtyHostControl")<
  PtyHostControl,
  {
    /** The host's pid, start time and number of PTYs. */
    readonly ping: Effect.Effect<PingResult, PtyHostUnavailable>
    /** Kills every PTY and makes the host exit; resolves once the host has acknowledged. */
    readonly shutdown: Effect.Effect<void, PtyHostUnavailable>
  }
>() {}

/** Where the host listens. */
export interface Options {
  readonly socketPath: string
}

const reconnectSchedule = Schedule.spaced("250 millis")

const layerProtocol = (socketPath: string) =>
  RpcClient.layerProtocolSocket({ retryTransientErrors: false, retrySchedule: reconnectSchedule }).pipe(
    // makeNet only fails when the protocol runs the socket, not when it is made.
    Layer.provide(Layer.effect(Socket.Socket, NodeSocket.makeNet({ path: socketPath })).pipe(Layer.orDie)),
    Layer.provide(layerSerialization)
  )

const makeClient = RpcClient.make(PtyHostRpcs, { spanPrefix: "PtyHostClient" })

/** The innermost message of a transport error (e.g. "connect ENOENT /…/pty-host.sock"). */
const describe = (error: unknown): string => {
  let message = "connection failed"
  let current: unknown = error
  for (let depth = 0; depth < 8 && typeof current === "object" && current !== null; depth++) {
    if ("message" in current && typeof current.message === "string" && current.message !== "") {
      message = current.message
    }
    current = "cause" in current ? current.cause : undefined
  }
  return message
}

const isRpcClientError = (error: unknown): error is RpcClientError =>
  Predicate.isTagged(error, "RpcClientError")

const unavailable = (socketPath: string, error: RpcClientError | Socket.SocketError) =>
  new PtyHostUnavailable({ message: `the PTY host at ${socketPath} is not reachable: ${describe(error)}` })

/**
 * The socket protocol dies (rather than fails) when a write hits a socket the host has just
 * closed, before the client has seen the close: that is the host going away too.
 */
const socketDefect = <E>(cause: Cause.Cause<E>): Option.Option<Socket.SocketError> =>
  Cause.find(cause, (reason) =>
    reason._tag === "Die" && Socket.isSocketError(reason.defect) ? Option.some(reason.defect) : Option.none()
  )

/** Builds the services on a connected client; the connection lives as long as the scope. */
const make = (socketPath: string) =>
  Effect.gen(function* () {
    const client = yield* makeClient
    const lift = <A, E>(effect: Effect.Effect<A, E | RpcClientError>) =>
      effect.pipe(
        Effect.catchIf(isRpcClientError, (error) => Effect.fail(unavailable(socketPath, error))),
        Effect.catchSomeCause((cause) =>
          Option.map(socketDefect(cause), (error) => Effect.fail(unavailable(socketPath, error)))
        )
      )
    const data = yield* PtyDataClient.make(dataSocketPathOf(socketPath))
    const host = PtyHost.of({
      spawn: (spec) => lift(client.Spawn(spec)),
      write: data.write,
      resize: (id, cols, rows) => lift(client.Resize({ id, cols, rows })),
      signal: (id, signal) => lift(client.Signal({ id, signal })),
      output: data.output,
      get: (id) => lift(client.Get({ id })),
      list: Effect.suspend(() => lift(client.List())),
      release: (id) => lift(client.Release({ id }))
    })
    const control = PtyHostControl.of({
      ping: Effect.suspend(() => lift(client.Ping())),
      shutdown: Effect.suspend(() => lift(client.Shutdown()))
    })
    return Context.make(PtyHost, host).pipe(Context.add(PtyHostControl, control))
  })

/** `PtyHost` and `PtyHostControl` over the socket at `socketPath`, reconnecting as described above. */
export const layer = (options: Options): Layer.Layer<PtyHost | PtyHostControl> =>
  Layer.scopedContext(make(options.socketPath)).pipe(Layer.provide(layerProtocol(options.socketPath)))

/** One ping on a connection of its own: whether a host answers at `socketPath` right now. */
export const ping = (
  socketPath: string,
  timeout: Duration.DurationInput = "2 seconds"
): Effect.Effect<PingResult, PtyHostUnavailable> =>
  Effect.flatMap(makeClient, (client) => client.Ping()).pipe(
    Effect.catchIf(isRpcClientError, (error) => Effect.fail(unavailable(socketPath, error))),
    Effect.scoped,
    Effect.provide(layerProtocol(socketPath)),
    Effect.timeoutFail({
      duration: timeout,
      onTimeout: () =>
        new PtyHostUnavailable({
          message: `the PTY host at ${socketPath} did not answer within ${Duration.format(Duration.decode(timeout))}`
        })
    })
  )
