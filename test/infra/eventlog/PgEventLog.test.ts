import { Layer } from "effect"
import * as PgEventLog from "../../../infra/eventlog/PgEventLog.js"
import * as Migrations from "../../../infra/db/Migrations.js"
import * as TestDatabase from "../../support/TestDatabase.js"
import { eventLogContract } from "./contract.js"

const pgLog = () =>
  PgEventLog.layer().pipe(
    Layer.provideMerge(Layer.effectDiscard(Migrations.run)),
    Layer.provide(TestDatabase.layerSql)
  )

eventLogContract("Postgres event log", pgLog(), pgLog)
