import MigPlanModel

/// `transfer.method: page-server` (`docs/page-server.md`): per instance, the destination's CRIU
/// page server and the source's loopback listener are set up before the freeze; the dump streams
/// the pages through the controller's SSH channels while it runs; the rest of the images follows
/// through the validating relay; the restore checks the received files' digest first.
extension MigrationCompiler {
    /// Side files of a receive directory on the destination: the page server's pid file and log,
    /// and the digest manifest of the received images.
    static func pageServerSideFiles(_ receiveDir: String) -> [String] {
        [receiveDir + ".pageserver.pid", receiveDir + ".pageserver.log", receiveDir + ".manifest"]
    }

    mutating func compilePageServer(after sessions: StepID, src: StepLocation, dst: StepLocation) {
        for instance in instances {
            let action = PageServerAction(instance: instance, from: source.name, to: destination.name,
                                          imagesDir: imagesDir(instance), receiveDir: restoreDir(instance))
            let prepare = add(instance.name, "pageServerPrepare", at: .controller, .pageServerPrepare(action),
                              after: [sessions], metrics: [.total])
            let checkpoint = add(instance.name, "checkpoint", at: src,
                .checkpoint(CheckpointAction(instance: instance, imagesDir: action.imagesDir)),
                after: [prepare], metrics: [.checkpoint, .downtime, .total])
            let finish = add(instance.name, "pageServerFinish", at: .controller, .pageServerFinish(action),
                             after: [checkpoint], metrics: [.transfer, .downtime, .total])
            let restore = add(instance.name, "restore", at: dst,
                .restore(RestoreAction(instance: instance, imagesDir: action.receiveDir)),
                after: [finish], metrics: [.restore, .downtime, .total])
            let verify = add(instance.name, "verifyRunning", at: dst,
                .verifyRunning(VerifyRunningAction(instance: instance, checkState: true)),
                after: [restore], metrics: [.total])
            _ = add(instance.name, "cleanupSource", at: src,
                .cleanupSource(CleanupAction(instances: [instance], paths: [action.imagesDir])),
                after: [verify], metrics: [])
            _ = add(instance.name, "cleanupIncoming", at: dst,
                .cleanupDestination(CleanupAction(instances: [], paths: [action.receiveDir] + Self.pageServerSideFiles(action.receiveDir))),
                after: [verify], metrics: [])
            if rollbackEnabled {
                // Once the dump succeeded the pages exist only on the destination: they come back
                // first (validated), and only then is anything removed there.
                let back = rollbackStep(instance.name, "pageServerReturn", at: .controller, .pageServerReturn(action), after: [])
                let cleanup = rollbackStep(instance.name, "cleanupDestination", at: dst,
                    .cleanupDestination(CleanupAction(instances: [instance],
                                                      paths: [action.receiveDir] + Self.pageServerSideFiles(action.receiveDir))),
                    after: [back.id])
                let restoreBack = rollbackStep(instance.name, "restoreOnSource", at: src,
                    .restoreOnSource(RestoreAction(instance: instance, imagesDir: action.imagesDir)), after: [cleanup.id])
                let verifyBack = rollbackStep(instance.name, "verifyRunning", at: src,
                    .verifyRunning(VerifyRunningAction(instance: instance, checkState: true)), after: [restoreBack.id])
                rollbacks.append(RollbackGroup(
                    id: "\(instance.name).rollback", migration: migration.name,
                    armedBy: [checkpoint], disarmedBy: [verify], steps: [back, cleanup, restoreBack, verifyBack]))
            }
        }
    }
}
