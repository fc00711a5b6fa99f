import * as Net from "node:net"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Layer, Logger, Redacted, Ref, Schema } from "effect"
import * as RunnerAddress from "@effect/cluster/RunnerAddress"
import * as Runners from "@effect/cluster/Runners"
import * as NodeSocket from "@effect/platform-node/NodeSocket"
import { Socket } from "@effect/platform/Socket"
import * as Rpc from "@effect/rpc/Rpc"
import * as RpcClient from "@effect/rpc/RpcClient"
import * as RpcGroup from "@effect/rpc/RpcGroup"
import * as RpcSerialization from "@effect/rpc/RpcSerialization"
import * as RpcServer from "@effect/rpc/RpcServer"
import * as RunnerTls from "../../../infra/cluster/RunnerTls.js"
import * as FreePort from "../../../infra/net/FreePort.js"

/** A stand-in for the runner's RPCs: it counts the calls that reached it. */
class Probe extends RpcGroup.make(Rpc.make("Ping", { success: Schema.Number })) {}

const secret = Redacted.make("the cluster secret, shared by every node")

/** A runner-like RPC server on a free port behind `RunnerTls.serverLayer`; returns its address and the calls served. */
const startServerWith = (logging?: RunnerTls.RefusalLogging) =>
  Effect.gen(function* () {
    const port = yield* FreePort.find()
    const served = yield* Ref.make(0)
    const address = RunnerAddress.make("127.0.0.1", port)
    yield* Layer.launch(
      RpcServer.layer(Probe).pipe(
        Layer.provide(Probe.toLayer({ Ping: () => Ref.updateAndGet(served, (n) => n + 1) })),
        Layer.provide(RpcServer.layerProtocolSocketServer),
        Layer.provide(RunnerTls.serverLayer(address, RunnerTls.runnerKey(secret), logging)),
        Layer.provide(RpcSerialization.layerMsgPack)
      )
    ).pipe(Effect.forkScoped)
    return { address, served }
  })

const startServer = startServerWith()

/** A raw connection that sends bytes that are not a handshake; resolves once the server closed it. */
const garbage = (address: RunnerAddress.RunnerAddress) =>
  Effect.async<void>((resume) => {
    const raw = Net.createConnection({ host: address.host, port: address.port }, () => {
      raw.write(Buffer.from("GET / HTTP/1.1\r\nhost: x\r\n\r\n"))
    })
    raw.on("error", () => {})
    raw.on("close", () => resume(Effect.void))
  })

/** One `Ping` over the runner client protocol made with `key`. */
const ping = (address: RunnerAddress.RunnerAddress, key: Buffer) =>
  Effect.gen(function* () {
    const makeProtocol = yield* Runners.RpcClientProtocol
    const protocol = yield* makeProtocol(address)
    const client = yield* RpcClient.make(Probe).pipe(Effect.provideService(RpcClient.Protocol, protocol))
    return yield* client.Ping()
  }).pipe(
    Effect.scoped,
    Effect.provide(RunnerTls.clientProtocolLayer(key)),
    Effect.provide(RpcSerialization.layerMsgPack),
    Effect.timeout("10 seconds")
  )

describe("runner transport", () => {
  it.scoped(
    "a peer with the cluster secret is served; a wrong secret or plain TCP never reaches the RPCs",
    () =>
      Effect.gen(function* () {
        const { address, served } = yield* startServer
        // The server may still be binding: the first call retries until it answers.
        expect(yield* ping(address, RunnerTls.runnerKey(secret)).pipe(Effect.retry({ times: 50 }))).toBe(1)

        const wrong = yield* ping(
          address,
          RunnerTls.runnerKey(Redacted.make("another cluster's secret!"))
        ).pipe(Effect.exit)
        expect(Exit.isFailure(wrong)).toBe(true)

        // Plain TCP: the runner's msgpack protocol without the handshake is dropped.
        const plain = yield* Effect.gen(function* () {
          const socket = yield* NodeSocket.makeNet({ host: address.host, port: address.port })
          const protocol = yield* RpcClient.makeProtocolSocket().pipe(Effect.provideService(Socket, socket))
          const client = yield* RpcClient.make(Probe).pipe(
            Effect.provideService(RpcClient.Protocol, protocol)
          )
          return yield* client.Ping()
        }).pipe(
          Effect.scoped,
          Effect.provide(RpcSerialization.layerMsgPack),
          Effect.timeout("5 seconds"),
          Effect.exit
        )
        expect(Exit.isFailure(plain)).toBe(true)

        // And a raw connection is closed by the server once it sees bytes that are not a handshake.
        const closed = yield* Effect.async<boolean>((resume) => {
          const raw = Net.createConnection({ host: address.host, port: address.port }, () => {
            raw.write(Buffer.from([0x82, 0xa4, 0x5f, 0x74, 0x61, 0x67, 0xa7, 0x52, 0x65, 0x71]))
          })
          raw.on("error", () => {})
          raw.on("close", () => resume(Effect.succeed(true)))
        })
        expect(closed).toBe(true)

        // Only the one call with the right key was served, and the server still serves it.
        expect(yield* Ref.get(served)).toBe(1)
        expect(yield* ping(address, RunnerTls.runnerKey(secret))).toBe(2)
      })
  )

  it.scoped("a flood of refused connections writes a few lines and one count, not a line each", () => {
    const lines: Array<string> = []
    const capture = Logger.make(({ message }) => {
      lines.push(Array.isArray(message) ? message.map(String).join(" ") : String(message))
    })
    return Effect.gen(function* () {
      const served = yield* Effect.scoped(
        Effect.gen(function* () {
          const { address, served } = yield* startServerWith({ burst: 3, interval: "1 hour" })
          // The server may still be binding: the first call retries until it answers.
          yield* ping(address, RunnerTls.runnerKey(secret)).pipe(Effect.retry({ times: 50 }))
          yield* Effect.forEach(Array.from({ length: 40 }), () => garbage(address), { concurrency: 8 })
          return yield* Ref.get(served)
        })
      )
      expect(served).toBe(1)
      // Stopping the server writes the count of the refusals not logged one by one.
      const refused = lines.filter((line) => line.includes("refused"))
      expect(
        refused.filter((line) => line.startsWith("runner connection from 127.0.0.1 refused"))
      ).toHaveLength(3)
      expect(
        refused.filter((line) => line.startsWith("37 more runner connections were refused"))
      ).toHaveLength(1)
      expect(refused).toHaveLength(4)
    }).pipe(Effect.provide(Logger.replace(Logger.defaultLogger, capture)))
  })
})
