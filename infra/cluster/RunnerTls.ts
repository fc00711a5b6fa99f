/**
 * How runners talk: TLS 1.2 with a pre-shared key (ECDHE-PSK) derived from the cluster secret.
 *
 * A runner port delivers messages to any entity (a session's keystrokes, a job's start), so it
 * answers only peers that prove they hold the secret: a connection that does not complete the
 * handshake never reaches the RPC server. The traffic (terminal output, environments) is
 * encrypted with forward secrecy, and there are no certificates to issue or rotate.
 *
 * Both ends keep Nagle's algorithm off: with it on, a small message written while an earlier one is
 * unacknowledged waits for the peer's delayed ACK (up to 40 ms), and concurrent calls across nodes
 * ran at a quarter of the rate.
 */
import * as crypto from "node:crypto"
import * as Net from "node:net"
import * as Tls from "node:tls"
import { Deferred, Duration, Effect, Exit, FiberSet, Layer, Redacted, Runtime, Schedule, Scope } from "effect"
import * as Runners from "@effect/cluster/Runners"
import type * as RunnerAddress from "@effect/cluster/RunnerAddress"
import * as NodeSocket from "@effect/platform-node/NodeSocket"
import * as Socket from "@effect/platform/Socket"
import * as SocketServer from "@effect/platform/SocketServer"
import * as RpcClient from "@effect/rpc/RpcClient"
import * as RpcSerialization from "@effect/rpc/RpcSerialization"

/** The PSK identity runners present; a different one is refused. */
const identity = "vibes-runner/1"

const tlsOptions = {
  minVersion: "TLSv1.2",
  maxVersion: "TLSv1.2",
  ciphers: "ECDHE-PSK-CHACHA20-POLY1305:ECDHE-PSK-AES256-CBC-SHA384"
} as const

/** How long a peer gets to complete the handshake. */
const handshakeTimeout = Duration.seconds(5)

/** How refused connections are logged: the first `burst` of each `interval` one by one, the rest counted. */
export interface RefusalLogging {
  readonly burst: number
  readonly interval: Duration.DurationInput
}

/** Five lines a minute at most, and one line with the count of the others. */
export const defaultRefusalLogging: RefusalLogging = { burst: 5, interval: "1 minute" }

/**
 * A log of refused connections that cannot flood: the first `burst` refusals of an interval get a
 * line each (with the peer and the reason); the rest are counted, and `summary` (run at the end
 * of each interval, and when the server stops) writes one line with their number and a few peers.
 */
const refusalLog = (options: RefusalLogging) => {
  let logged = 0
  let suppressed = 0
  const peers = new Set<string>()
  return {
    /** The line to log for a refusal, or `undefined` when it is only counted. */
    refused: (peer: string, reason: string): string | undefined => {
      if (logged < options.burst) {
        logged++
        return (
          `runner connection from ${peer} refused: its TLS handshake failed (${reason}); ` +
          `every node needs the same VIBES_CLUSTER_SECRET (or VIBES_ADMIN_TOKEN)`
        )
      }
      suppressed++
      if (peers.size < 5) peers.add(peer)
      return undefined
    },
    summary: Effect.suspend(() => {
      const count = suppressed
      const shown = peers.size
      const from = [...peers].join(", ")
      logged = 0
      suppressed = 0
      peers.clear()
      return count === 0
        ? Effect.void
        : Effect.logWarning(
            `${count} more runner connections were refused within ${Duration.format(options.interval)} ` +
              `(from ${from}${count > shown ? ", …" : ""}); only the first ${options.burst} of each ` +
              `${Duration.format(options.interval)} are logged one by one`
          )
    })
  }
}

/** The 32-byte key both ends derive from the cluster secret. */
export const runnerKey = (secret: Redacted.Redacted<string>): Buffer =>
  Buffer.from(crypto.hkdfSync("sha256", Redacted.value(secret), "vibes-cluster", "runner tls-psk v1", 32))

/** Waits for a client's handshake to complete, or for the error that ended it. */
const handshake = (socket: Tls.TLSSocket) =>
  Effect.async<Tls.TLSSocket, Socket.SocketError>((resume) => {
    const onError = (cause: Error) =>
      resume(Effect.fail(new Socket.SocketGenericError({ reason: "Open", cause })))
    socket.once("secureConnect", () => {
      socket.off("error", onError)
      resume(Effect.succeed(socket))
    })
    socket.once("error", onError)
  })

/** Destroys `socket` (and the TCP socket under it) unless it is already closed. */
const destroy = (socket: Net.Socket) =>
  Effect.sync(() => {
    if (!socket.destroyed) socket.destroy()
  })

/**
 * The runner's server, listening on `listen`: a connection reaches the RPC server only once its
 * peer has completed the handshake with `key`. Refused peers are logged, a few per interval (see
 * `RefusalLogging`), so that a flood of bad connections cannot flood the log.
 */
export const serverLayer = (
  listen: RunnerAddress.RunnerAddress,
  key: Buffer,
  logging: RefusalLogging = defaultRefusalLogging
): Layer.Layer<SocketServer.SocketServer, SocketServer.SocketServerError> =>
  Layer.scoped(
    SocketServer.SocketServer,
    Effect.gen(function* () {
      const runtime = yield* Effect.runtime<never>()
      const refusals = refusalLog(logging)
      yield* Effect.forkScoped(
        refusals.summary.pipe(
          Effect.repeat(Schedule.spaced(logging.interval)),
          Effect.delay(logging.interval)
        )
      )
      yield* Effect.addFinalizer(() => refusals.summary)
      const pending: Array<Tls.TLSSocket> = []
      let onConnection = (socket: Tls.TLSSocket): void => {
        pending.push(socket)
      }
      const failed = yield* Deferred.make<never, Error>()
      const server = Tls.createServer(
        {
          ...tlsOptions,
          noDelay: true,
          handshakeTimeout: Duration.toMillis(handshakeTimeout),
          pskCallback: (_socket, peer) => (peer === identity ? key : null)
        },
        (socket) => onConnection(socket)
      )
      server.on("error", (cause) => Deferred.unsafeDone(failed, Exit.fail(cause)))
      server.on("tlsClientError", (cause, socket) => {
        const line = refusals.refused(socket.remoteAddress ?? "?", cause.message)
        if (line !== undefined) Runtime.runFork(runtime)(Effect.logWarning(line))
      })
      yield* Effect.addFinalizer(() =>
        Effect.async<void>((resume) => {
          server.close(() => resume(Effect.void))
        })
      )
      yield* Effect.async<void>((resume) => {
        server.listen({ host: listen.host, port: listen.port }, () => resume(Effect.void))
      }).pipe(
        Effect.raceFirst(
          Effect.mapError(
            Deferred.await(failed),
            (cause) => new SocketServer.SocketServerError({ reason: "Open", cause })
          )
        )
      )

      const run = <R, E, _>(handler: (socket: Socket.Socket) => Effect.Effect<_, E, R>) =>
        Effect.gen(function* () {
          const scope = yield* Scope.make()
          const fibers = yield* FiberSet.make().pipe(Scope.extend(scope))
          const fork = yield* FiberSet.runtime(fibers)<R>()
          const accept = (socket: Tls.TLSSocket): void => {
            socket.on("error", () => {})
            fork(
              NodeSocket.fromDuplex(
                Effect.acquireRelease(Effect.succeed(socket), (socket) => destroy(socket))
              ).pipe(
                Effect.flatMap(handler),
                Effect.catchAllCause((cause) => Effect.logDebug("runner connection ended", cause))
              )
            )
          }
          return yield* Effect.async<never>(() => {
            const previous = onConnection
            onConnection = accept
            pending.splice(0).forEach(accept)
            return Effect.suspend(() => {
              onConnection = previous
              return Scope.close(scope, Exit.void)
            })
          }).pipe(
            Effect.raceFirst(
              Effect.mapError(
                Deferred.await(failed),
                (cause) => new SocketServer.SocketServerError({ reason: "Unknown", cause })
              )
            )
          )
        })

      const address = server.address()
      return SocketServer.SocketServer.of({
        address:
          typeof address === "string" || address === null
            ? { _tag: "UnixAddress", path: String(address) }
            : { _tag: "TcpAddress", hostname: address.address, port: address.port },
        run
      })
    })
  )

/** How a runner reaches another: the handshake with `key`, then the RPC protocol over it. */
export const clientProtocolLayer = (
  key: Buffer
): Layer.Layer<Runners.RpcClientProtocol, never, RpcSerialization.RpcSerialization> =>
  Layer.effect(
    Runners.RpcClientProtocol,
    Effect.map(
      RpcSerialization.RpcSerialization,
      (serialization) => (address: RunnerAddress.RunnerAddress) =>
        NodeSocket.fromDuplex(
          Effect.acquireRelease(
            Effect.sync(() => {
              const raw = Net.createConnection({ host: address.host, port: address.port, noDelay: true })
              raw.on("error", () => {})
              const socket = Tls.connect({
                ...tlsOptions,
                socket: raw,
                pskCallback: () => ({ psk: key, identity }),
                // PSK authenticates the peer; there is no certificate whose name to check.
                checkServerIdentity: () => undefined
              })
              return { raw, socket }
            }),
            ({ raw, socket }) => Effect.zipRight(destroy(socket), destroy(raw))
          ).pipe(Effect.flatMap(({ socket }) => handshake(socket))),
          { openTimeout: "2 seconds" }
        ).pipe(
          Effect.flatMap((socket) =>
            RpcClient.makeProtocolSocket().pipe(
              Effect.provideService(Socket.Socket, socket),
              Effect.provideService(RpcSerialization.RpcSerialization, serialization)
            )
          )
        )
    )
  )
