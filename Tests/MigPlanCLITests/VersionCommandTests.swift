import Testing
@testable import MigPlanCLI

@Suite struct VersionCommandTests {
    @Test func versionListsEveryLinkedLibrary() {
        let names = MigPlanVersionString.components.map(\.0)
        #expect(names == ["migplan", "libssh2", "libpq", "zlib", "libyaml"])
        for (_, version) in MigPlanVersionString.components {
            #expect(version.first?.isNumber == true)
        }
    }
}
