/// migplan's own version, printed by `migplan version` and recorded in every journal run.
public enum MigPlanVersion {
    public static let current = "0.1.0"
}
