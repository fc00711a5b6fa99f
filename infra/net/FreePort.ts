/**
 * Asks the kernel for a free TCP port on the loopback interface.
 */
import * as net from "node:net"
import { Effect } from "effect"

/** A port that was free a moment ago on `host` (the caller binds it soon after). */
export const find = (host = "127.0.0.1"): Effect.Effect<number, Error> =>
  Effect.async<number, Error>((resume) => {
    const server = net.createServer()
    server.unref()
    server.once("error", (error) => resume(Effect.fail(error)))
    server.listen(0, host, () => {
      const address = server.address()
      const port = typeof address === "object" && address !== null ? address.port : 0
      server.close(() =>
        resume(port > 0 ? Effect.succeed(port) : Effect.fail(new Error("no port was assigned")))
      )
    })
  })
