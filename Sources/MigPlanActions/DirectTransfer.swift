import Foundation
import MigPlanBasics
import MigPlanEngine
import MigPlanGraph
import MigPlanModel

/// The shell commands of a `direct` transfer's one-time key (pure: built from plan values that the
/// validator restricted to safe characters, and from a move id that is checked to be hex).
///
/// Lifecycle (docs/direct-transfer.md): `issueTransferKey` generates the key pair on the source in
/// `W/keys/MOVEID/` (0700; `id`, `id.pub`, the pin `known_hosts`, and `target` naming the archive it
/// is for) and appends its public half to the destination's authorized_keys, restricted to the
/// forced receive command of this archive and to the source's address; `transfer` runs OpenSSH's
/// client on the source with exactly the plan's algorithms; `revokeTransferKey` removes every key
/// line of this archive (found by its forced command) and every key directory of this archive.
public enum DirectTransfer {
    /// The destination's authorized_keys file as a shell word (`$HOME/...` when the plan names none).
    public static func keysFileWord(_ keysFile: String?) -> String {
        keysFile.map { $0.shellQuoted } ?? "\"$HOME/.ssh/authorized_keys\""
    }

    /// What `target` files hold: the destination and its archive path.
    public static func target(_ a: TransferKeyAction) -> String { "\(a.to):\(a.destinationPath)" }

    /// The command the destination forces for this archive's key. Before it reads a byte of stdin,
    /// under the keys file's lock (never without it: exit 75), it removes this archive's key lines
    /// and exits 77 when its own line (`migplan-MOVEID`) was already gone: the key works once, even
    /// when two sessions log in with it at the same time. Still under the lock it removes a stale
    /// `D.part` and creates `D.part` exclusively (noclobber); then it receives stdin into it and
    /// prints its SHA-256. It receives nothing once `D` exists (the controller clears the previous
    /// attempt's files before sending). No `"` in it (it sits in `command="…"`).
    public static func receiveCommand(destinationPath d: String, keysFile: String?, moveID: String) -> String {
        let q = d.shellQuoted
        let dir = (d as NSString).deletingLastPathComponent.shellQuoted
        let f = keysFile?.shellQuoted ?? "$HOME/.ssh/authorized_keys"
        return "umask 077; f=\(f); q=$(printf '\\042'); exec 9>>${f%/*}/.migplan-keys.lock && flock -w 30 9 || exit 75; "
            + "t=$(mktemp $f.XXXXXX) || exit 75; "
            + "awk -v p=restrict,command=$q -v m=\(keyLineMark(destinationPath: d).shellQuoted) -v k=migplan-\(moveID) "
            + "'index($0,p)==1&&index($0,m){if(index($0,k))s=1;next}{print}END{exit !s}' $f > $t; u=$?; "
            + "[ $u -eq 0 ] || { rm -f $t; [ $u -eq 1 ] && echo 'this one-time key was already used' >&2 && exit 77; exit 75; }; "
            + "chmod 600 $t && mv -f $t $f || { rm -f $t; exit 75; }; "
            + "mkdir -p \(dir) && [ ! -e \(q) ] && rm -f \(q).part && set -C && exec 3> \(q).part || exit 73; set +C; exec 9>&-; "
            + "cat >&3 && exec 3>&- && sha256sum \(q).part | cut -c1-64"
    }

    /// On the destination, by the controller before the source sends: no file of an earlier attempt.
    public static func clearReceivedCommand(destinationPath d: String) -> String {
        let q = d.shellQuoted
        return "rm -f \(q) \(q).part \(q).sha256 \(q).source \(q).manifest \(q).manifest.hmac"
    }

    /// The substring every key line of this archive holds (in its forced command).
    public static func keyLineMark(destinationPath d: String) -> String { "exec 3> \(d.shellQuoted).part" }

    /// An awk program (in single quotes, no `"`) that prints every line of a keys file except this
    /// archive's key lines: those that BEGIN with `restrict,command="` (`p`) and contain the mark
    /// (`m`). Any other line — the controller's or an admin's key, even one naming the archive —
    /// is kept byte for byte.
    static func otherLinesFilter(_ a: TransferKeyAction) -> String {
        "awk -v p='restrict,command=\"' -v m=\(keyLineMark(destinationPath: a.destinationPath).shellQuoted) 'index($0,p)==1&&index($0,m){next}{print}'"
    }

    /// What `installCommand` replaces with the destination's `date -d '+2 hours' +%Y%m%d%H%M`.
    public static let expiryPlaceholder = "@MIGPLAN-EXPIRY@"

    /// The authorized_keys line: the key usable only from `sourceAddress`, only to receive this
    /// archive, and only until `expiryTime` (YYYYMMDDHHMM, the destination's local time; by
    /// default the placeholder `installCommand` fills in on the destination).
    public static func authorizedKeysLine(publicKey: String, destinationPath: String, keysFile: String?, sourceAddress: String,
                                          moveID: String, expiryTime: String = expiryPlaceholder) -> String {
        "restrict,command=\"\(receiveCommand(destinationPath: destinationPath, keysFile: keysFile, moveID: moveID))\",from=\"\(sourceAddress)\","
            + "expiry-time=\"\(expiryTime)\",no-pty,no-port-forwarding,no-agent-forwarding,no-X11-forwarding \(publicKey)"
    }

    /// On the source: a fresh key pair for `moveID` and the pin; prints the public key.
    public static func generateCommand(_ a: TransferKeyAction, moveID: String, pin: String) -> String {
        let kd = a.keysDir.shellQuoted
        return "set -e; umask 077; mkdir -p \(kd); chmod 700 \(kd); t=$(mktemp -d \(kd)/.new-XXXXXX); "
            + "printf '%s\\n' \(target(a).shellQuoted) > \"$t/target\"; "
            + "ssh-keygen -q -t ed25519 -N '' -C migplan-\(moveID) -f \"$t/id\" < /dev/null > /dev/null; "
            + "printf '%s' \(pin.shellQuoted) > \"$t/known_hosts\"; "
            + "rm -rf \(kd)/\(moveID); mv \"$t\" \(kd)/\(moveID); cat \(kd)/\(moveID)/id.pub"
    }

    /// On the destination: appends `line` to the keys file atomically (temp file + rename under
    /// a lock, never without it; other lines untouched byte for byte, a missing final newline
    /// added first so the new line never joins the last one; mode 0600; its directory created
    /// 0700 when missing). `expiryPlaceholder` in `line` becomes the destination's local time in
    /// two hours (`expiry-time`, as sshd reads it).
    public static func installCommand(keysFile: String?, line: String) -> String {
        let parts = line.components(separatedBy: expiryPlaceholder)
        let text = parts.count == 2
            ? "printf '%s%s%s\\n' \(parts[0].shellQuoted) \"$e\" \(parts[1].shellQuoted)"
            : "printf '%s\\n' \(line.shellQuoted)"
        return "set -e; umask 077; f=\(keysFileWord(keysFile)); d=$(dirname \"$f\"); [ -d \"$d\" ] || mkdir -p -m 700 \"$d\"; "
            + "e=$(date -d '+2 hours' +%Y%m%d%H%M); [ ${#e} -eq 12 ] || { echo \"date printed no expiry time: $e\" >&2; exit 1; }; "
            + "exec 9>>\"$d/.migplan-keys.lock\"; flock -w 60 9 || { echo \"$d/.migplan-keys.lock is held by another process\" >&2; exit 75; }; "
            + "t=$(mktemp \"$f.XXXXXX\"); "
            + "{ if [ -s \"$f\" ]; then cat \"$f\"; [ -z \"$(tail -c 1 \"$f\")\" ] || echo; fi; \(text); } > \"$t\"; "
            + "chmod 600 \"$t\"; mv -f \"$t\" \"$f\""
    }

    /// On the destination: removes every key line of this archive (same locking and atomicity;
    /// only lines that begin with `restrict,command="` and hold the archive's mark).
    public static func removeLinesCommand(_ a: TransferKeyAction) -> String {
        "set -e; f=\(keysFileWord(a.keysFile)); [ -f \"$f\" ] || exit 0; \(otherLinesFilter(a)) \"$f\" | cmp -s - \"$f\" && exit 0; "
            + "d=$(dirname \"$f\"); exec 9>>\"$d/.migplan-keys.lock\"; "
            + "flock -w 60 9 || { echo \"$d/.migplan-keys.lock is held by another process\" >&2; exit 75; }; t=$(mktemp \"$f.XXXXXX\"); "
            + "\(otherLinesFilter(a)) \"$f\" > \"$t\"; chmod 600 \"$t\"; mv -f \"$t\" \"$f\""
    }

    /// On the destination: exit 0 when no key line of this archive is left.
    public static func linesAbsentCommand(_ a: TransferKeyAction) -> String {
        "f=\(keysFileWord(a.keysFile)); [ ! -f \"$f\" ] || \(otherLinesFilter(a)) \"$f\" | cmp -s - \"$f\""
    }

    /// On the source: removes every key directory (private key, pin) of this archive.
    public static func removeKeyDirsCommand(_ a: TransferKeyAction) -> String {
        let kd = a.keysDir.shellQuoted
        return "for k in \(kd)/* \(kd)/.new-*; do [ -f \"$k/target\" ] || continue; "
            + "[ \"$(cat \"$k/target\")\" = \(target(a).shellQuoted) ] && rm -rf \"$k\"; done; "
            + "rmdir \(kd) 2>/dev/null; true"
    }

    /// On the source: exit 0 when no key directory of this archive is left.
    public static func keyDirsAbsentCommand(_ a: TransferKeyAction) -> String {
        let kd = a.keysDir.shellQuoted
        return "for k in \(kd)/* \(kd)/.new-*; do [ -f \"$k/target\" ] || continue; "
            + "[ \"$(cat \"$k/target\")\" = \(target(a).shellQuoted) ] && exit 1; done; exit 0"
    }

    /// The OpenSSH client options: no config, this key only, the pin only, strict checking, no
    /// password or agent, exactly the plan's algorithms (no fallback).
    public static func sshOptions(keyDir: String, ssh: SSHSettings, destination: MigPlanModel.Host) -> [String] {
        let k = keyDir
        var o = ["-F", "/dev/null", "-T", "-x", "-a", "-o", "IdentitiesOnly=yes", "-i", "\(k)/id",
                 "-o", "UserKnownHostsFile=\(k)/known_hosts", "-o", "GlobalKnownHostsFile=/dev/null",
                 "-o", "StrictHostKeyChecking=yes", "-o", "UpdateHostKeys=no", "-o", "BatchMode=yes",
                 // "Key value" form: the journal's redaction hides the value of any `…PASSWORD…=`.
                 "-o", "PasswordAuthentication no", "-o", "KbdInteractiveAuthentication=no",
                 "-o", "ControlMaster=no", "-o", "ControlPath=none", "-o", "ClearAllForwardings=yes",
                 "-o", "ConnectTimeout=20", "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4"]
        o += ["-o", "Ciphers=\(ssh.ciphers.joined(separator: ","))", "-o", "MACs=\(ssh.macs.joined(separator: ","))",
              "-o", "KexAlgorithms=\(ssh.kex.joined(separator: ","))",
              "-o", "HostKeyAlgorithms=\(ssh.hostKeyTypes.joined(separator: ","))"]
        o += ["-p", String(destination.port), "-l", destination.user, destination.address]
        return o
    }

    /// On the source: sends the archive over `ssh` (the destination's forced command receives it)
    /// while hashing it; prints `sent HEX` and `received HEX`.
    public static func sendCommand(sourcePath: String, keyDir: String, ssh: SSHSettings, destination: MigPlanModel.Host) -> String {
        let s = sourcePath.shellQuoted
        let words = sshOptions(keyDir: keyDir, ssh: ssh, destination: destination).map(\.shellQuoted).joined(separator: " ")
        let k = keyDir.shellQuoted
        return "set -o pipefail; umask 077; sha256sum \(s) > \(k)/sent.sha256 & h=$!; "
            + "r=$(ssh \(words) receive < \(s)) || { e=$?; wait $h; echo \"ssh exited $e\" >&2; exit 1; }; "
            + "wait $h || exit 1; echo \"sent $(cut -c1-64 \(k)/sent.sha256)\"; echo \"received $r\""
    }

    /// The pin for the source: the destination's host keys from the controller's known_hosts (plain
    /// entries naming `destination.knownHostsName`, of the plan's host key types), keyed by that name.
    public static func pin(knownHostsFile: String, destination: MigPlanModel.Host, hostKeyTypes: [String]) throws(ActionError) -> String {
        guard let text = try? String(contentsOfFile: knownHostsFile, encoding: .utf8) else {
            throw ActionError(.preflight, host: destination.name, "cannot read the plan's known_hosts \(knownHostsFile) for the destination's pin")
        }
        let name = destination.knownHostsName
        var lines: [String] = []
        for raw in text.split(separator: "\n") {
            let fields = raw.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
            guard fields.count >= 3, !fields[0].hasPrefix("@"), !fields[0].hasPrefix("#") else { continue }
            guard fields[0].split(separator: ",").contains(where: { String($0) == name }),
                  hostKeyTypes.contains(fields[1]),
                  fields[2].utf8.allSatisfy({ $0 < 0x80 && (Character(UnicodeScalar($0)).isLetter || Character(UnicodeScalar($0)).isNumber || $0 == 0x2B || $0 == 0x2F || $0 == 0x3D) })
            else { continue }
            lines.append("\(name) \(fields[1]) \(fields[2])\n")
        }
        guard !lines.isEmpty else {
            throw ActionError(.preflight, host: destination.name,
                              "no plain (unhashed) entry for \(name) of type \(hostKeyTypes.joined(separator: "/")) in \(knownHostsFile): cannot pin the destination's host key for the source")
        }
        return lines.joined()
    }
}

// MARK: - The steps

extension LiveStepRunner {
    func sourceAddress(_ a: TransferKeyAction) throws -> String { try host(a.from).address }

    func issueTransferKey(_ context: StepContext, _ a: TransferKeyAction) async throws -> [String: String] {
        do {
            return try await issueTransferKeyOnce(a)
        } catch {
            // Nothing half-issued stays (a retry issues a fresh key).
            _ = try? await revokeTransferKey(a)
            throw error
        }
    }

    func issueTransferKeyOnce(_ a: TransferKeyAction) async throws -> [String: String] {
        let moveID = MoveManifest.newMoveID()
        let destination = try host(a.to)
        let pin = try DirectTransfer.pin(knownHostsFile: plan.ssh.knownHosts, destination: destination,
                                         hostKeyTypes: plan.ssh.hostKeyTypes)
        let generated = try await must(a.from, DirectTransfer.generateCommand(a, moveID: moveID, pin: pin), "ssh-keygen (one-time key)")
        let publicKey = generated.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
        let parts = publicKey.split(separator: " ")
        guard parts.count == 3, parts[0] == "ssh-ed25519", parts[2] == "migplan-\(moveID)",
              parts[1].utf8.allSatisfy({ $0 < 0x80 && (Character(UnicodeScalar($0)).isLetter || Character(UnicodeScalar($0)).isNumber || $0 == 0x2B || $0 == 0x2F || $0 == 0x3D) })
        else {
            throw ActionError(.commandFailed, host: a.from, "ssh-keygen printed no ed25519 public key for migplan-\(moveID)")
        }
        let line = DirectTransfer.authorizedKeysLine(publicKey: publicKey, destinationPath: a.destinationPath,
                                                     keysFile: a.keysFile, sourceAddress: try sourceAddress(a), moveID: moveID)
        try await must(a.to, DirectTransfer.installCommand(keysFile: a.keysFile, line: line), "install the one-time key")
        return ["moveID": moveID, "keyDir": "\(a.keysDir)/\(moveID)", "keysFile": a.keysFile ?? "~/.ssh/authorized_keys",
                "from": try sourceAddress(a)]
    }

    /// The source first (its session is idle after the transfer), then one command on the
    /// destination (whose session the next steps of the downtime use).
    func revokeTransferKey(_ a: TransferKeyAction) async throws -> [String: String] {
        try await must(a.from, DirectTransfer.removeKeyDirsCommand(a), "delete the one-time key on \(a.from)")
        try await must(a.to, DirectTransfer.removeLinesCommand(a), "remove the one-time key from \(a.to)")
        return ["revoked": DirectTransfer.target(a)]
    }

    func transferKeyRevoked(_ a: TransferKeyAction) async throws -> Bool {
        guard try await sh(a.from, DirectTransfer.keyDirsAbsentCommand(a)).succeeded else { return false }
        return try await sh(a.to, DirectTransfer.linesAbsentCommand(a)).succeeded
    }

    /// The move id the key of a transfer's archive was issued for (the run's issue step for it).
    func issuedMoveID(_ step: Step, _ outputs: [StepID: [String: String]]) -> String? {
        guard case .transfer(let t) = step.action else { return nil }
        for s in graph.steps {
            if case .issueTransferKey(let k) = s.action, k.destinationPath == t.destinationPath, k.to == t.to {
                return outputs[s.id]?["moveID"]
            }
        }
        return nil
    }

    /// `direct`: the source sends the archive with its one-time key; both ends' digests must agree.
    func directTransfer(_ context: StepContext, _ a: TransferAction, sourceStamp: String) async throws -> (sha256: String, bytes: Int64, seconds: Double, moveID: String) {
        guard let moveID = issuedMoveID(context.step, context.outputs), MoveManifest.isMoveID(moveID) else {
            throw ActionError(.preflight, host: a.from, "no one-time key was issued for \(a.destinationPath); cannot send it directly")
        }
        let fallbackKeysDir = "\(try host(a.from).runtime.workDir)/keys"
        let keysDir = transferKeyAction(for: a)?.keysDir ?? fallbackKeysDir
        let keyDir = "\(keysDir)/\(moveID)"
        let command = DirectTransfer.sendCommand(sourcePath: a.sourcePath, keyDir: keyDir, ssh: plan.ssh, destination: try host(a.to))
        try await must(a.to, DirectTransfer.clearReceivedCommand(destinationPath: a.destinationPath), "clear \(a.destinationPath)")
        let started = ContinuousClock.now
        let d = a.destinationPath.shellQuoted
        let out: CommandOutput
        do {
            out = try await must(a.from, command, "direct transfer (ssh from \(a.from) to \(a.to))")
        } catch {
            _ = try? await sh(a.to, "rm -f \(d).part")
            // Without a rollback (`onFailure: none`) no step would revoke the key after a final
            // failure: revoke it here (a retryable failure keeps it for the next attempt).
            let retryable = (error as? any RetryClassifiable)?.isRetryable ?? false
            if !retryable, plan.migration(named: context.step.migration)?.onFailure == FailurePolicy.none,
               let key = transferKeyAction(for: a) {
                _ = try? await revokeTransferKey(key)
            }
            throw error
        }
        let duration = seconds(ContinuousClock.now - started)
        var sent = "", received = ""
        for line in out.stdoutText.split(separator: "\n") {
            if line.hasPrefix("sent ") { sent = String(line.dropFirst(5)) }
            if line.hasPrefix("received ") { received = String(line.dropFirst(9)) }
        }
        guard sent.utf8.count == 64, sent == received else {
            _ = try? await sh(a.to, "rm -f \(d).part")
            throw ActionError(.digestMismatch, host: a.to,
                              "the source sent SHA-256 \(sent.isEmpty ? "?" : sent), the destination received \(received.isEmpty ? "?" : received): refusing \(a.destinationPath)")
        }
        let bytes = sourceStamp.split(separator: " ").first.flatMap { Int64($0) } ?? 0
        return (sent, bytes, duration, moveID)
    }

    /// The key action issued for a direct transfer's archive.
    func transferKeyAction(for a: TransferAction) -> TransferKeyAction? {
        graph.steps.lazy.compactMap { s -> TransferKeyAction? in
            if case .issueTransferKey(let k) = s.action, k.destinationPath == a.destinationPath, k.to == a.to { return k }
            return nil
        }.first
    }

    // MARK: Manifest

    /// The archive step a transfer depends on.
    func archiveAction(of transfer: Step) -> ArchiveAction? {
        for dependency in transfer.dependsOn {
            if case .archive(let a)? = graph.step(dependency)?.action { return a }
        }
        return nil
    }

    /// Writes `D.manifest` and `D.manifest.hmac` next to the received archive.
    func writeManifest(_ context: StepContext, _ a: TransferAction, moveID: String, sha256: String, bytes: Int64) async throws -> [String: String] {
        let keys: ManifestKeys
        do { keys = try ManifestKeys.load() } catch { throw ActionError(.preflight, host: "controller", error.description) }
        let manifest = MoveManifest(
            moveID: moveID, runID: context.runID, plan: plan.name, migration: context.step.migration,
            instances: archiveAction(of: context.step)?.instances.map(\.name) ?? [],
            archive: (a.destinationPath as NSString).lastPathComponent, sha256: sha256, bytes: bytes)
        let bytesOut = manifest.encoded()
        let mac = keys.mac(bytesOut, runID: context.runID)
        let d = a.destinationPath.shellQuoted
        let b64 = Data(bytesOut).base64EncodedString()
        try await must(a.to, "umask 077; printf '%s' \(b64.shellQuoted) | base64 -d > \(d).manifest.tmp && mv -f \(d).manifest.tmp \(d).manifest && "
                       + "printf '%s\\n' \(mac) > \(d).manifest.hmac", "write the move's manifest")
        return ["moveID": moveID, "runID": context.runID]
    }

    /// The transfer step a verifyDigest step checks.
    func ledgerPath(host h: String) throws -> String { "\(try host(h).runtime.workDir)/ledger/restored-moves" }

    /// Reads the manifest, its MAC and the ledger back from the destination and checks them.
    func checkManifest(_ context: StepContext, _ v: VerifyDigestAction, sha256: String) async throws -> MoveManifest {
        let h = try hostName(of: context.step)
        guard let transfer = graph.step(v.digestFrom), case .transfer(let t) = transfer.action else {
            throw ActionError(.archiveRefused, host: h, "no transfer step \(v.digestFrom) for \(v.archivePath)")
        }
        let made = context.outputs[v.digestFrom] ?? [:]
        guard let moveID = made["moveID"], MoveManifest.isMoveID(moveID) else {
            throw ActionError(.archiveRefused, host: h, "\(v.digestFrom) recorded no move id: refusing to unpack \(v.archivePath)")
        }
        var runs = [context.runID]
        // `apply --resume`: the move may have been made by the run being resumed (recorded in
        // the journal as the completed transfer's output).
        if resumed, let earlier = made["runID"], earlier != context.runID { runs.append(earlier) }
        let keys: ManifestKeys
        do { keys = try ManifestKeys.load() } catch { throw ActionError(.preflight, host: "controller", error.description) }
        let d = v.archivePath.shellQuoted
        let out = try await sh(h, "base64 -w0 \(d).manifest && echo && head -c 200 \(d).manifest.hmac && echo && "
                                + "{ cat \(try ledgerPath(host: h).shellQuoted) 2>/dev/null || true; }")
        guard out.succeeded else {
            throw ActionError(.archiveRefused, host: h, ManifestRefusal.malformed("no manifest next to \(v.archivePath)").description)
        }
        let lines = out.stdoutText.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        guard lines.count >= 2, let raw = Data(base64Encoded: lines[0]) else {
            throw ActionError(.archiveRefused, host: h, ManifestRefusal.malformed("unreadable manifest next to \(v.archivePath)").description)
        }
        // Ledger lines are `MOVEID CONTAINER` (older ones: `MOVEID`). A resumed run re-checks a
        // gate its predecessor passed: that move may be in the ledger already (one of its
        // containers restored before the interruption); the restore act refuses per container.
        let ledger = context.previouslyCompleted ? Set<String>()
            : Set(lines.dropFirst(2).compactMap { $0.split(separator: " ").first.map(String.init) })
        let check = ManifestCheck(keys: keys, acceptedRuns: runs, moveID: moveID, sha256: sha256, plan: plan.name,
                                  migration: context.step.migration,
                                  instances: archiveAction(of: transfer)?.instances.map(\.name) ?? [],
                                  archive: (t.destinationPath as NSString).lastPathComponent)
        do {
            return try check.check(manifest: Array(raw), macHex: lines[1], ledger: ledger)
        } catch {
            throw ActionError(.archiveRefused, host: h, "\(error.description): refusing to unpack \(v.archivePath)")
        }
    }

    /// The move id a restore step restores (from the verifyDigest step before its unpack).
    func restoredMoveID(_ step: Step, _ outputs: [StepID: [String: String]]) -> String? {
        for dependency in step.dependsOn {
            guard let unpack = graph.step(dependency), case .unpack = unpack.action else { continue }
            for before in unpack.dependsOn {
                if case .verifyDigest? = graph.step(before)?.action, let id = outputs[before]?["moveID"] { return id }
            }
        }
        return nil
    }

    /// Shell: exits 67 (refused as a replay) when the ledger records `moveID` as restored for
    /// `container` already (`MOVEID CONTAINER` lines; an older bare `MOVEID` line counts for every
    /// container). Run by the restore act itself, so a resumed run cannot restore a move twice.
    static func ledgerRefusal(ledger: String, moveID: String, container: String) -> String {
        let l = ledger.shellQuoted
        return "if [ -f \(l) ] && awk -v id=\(moveID) -v c=\(container.shellQuoted) '$1==id&&(NF==1||$2==c){f=1}END{exit !f}' \(l); then "
            + "echo \"move \(moveID) was already restored here for \(container) (ledger \(ledger)): refusing to restore it again (replay)\" >&2; exit 67; fi; "
    }

    /// Shell: appends `MOVEID CONTAINER` to the ledger (append-only); exits 68 when it cannot.
    static func ledgerAppend(ledger: String, moveID: String, container: String) -> String {
        let l = ledger.shellQuoted
        return "{ (umask 077; mkdir -p \((ledger as NSString).deletingLastPathComponent.shellQuoted) && printf '%s %s\\n' \(moveID) \(container.shellQuoted) >> \(l)); } "
            + "|| { echo \"cannot record move \(moveID) of \(container) as restored in \(ledger)\" >&2; exit 68; }; "
    }

    /// The ledger commands of a restore step (nil when it restores no archive move: rollback,
    /// page-server move): the refusal to run first, the append to run right after the restore.
    func ledgerCommands(_ step: Step, container: String, host h: String, outputs: [StepID: [String: String]]) throws -> (moveID: String, refuse: String, append: String)? {
        guard case .restore = step.action, let moveID = restoredMoveID(step, outputs), MoveManifest.isMoveID(moveID) else { return nil }
        let ledger = try ledgerPath(host: h)
        return (moveID, Self.ledgerRefusal(ledger: ledger, moveID: moveID, container: container),
                Self.ledgerAppend(ledger: ledger, moveID: moveID, container: container))
    }
}
