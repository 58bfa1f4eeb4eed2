import Foundation

/// Greedy (temperature 0) or temperature + top-p sampling (runtime sampling.py). Sampled tokens
/// use SplitMix64, so they differ from the Python runtime's numpy draws; greedy ones do not.
public struct SamplingConfig {
    public var temperature: Float = 0
    public var topP: Float = 1
    public var seed: UInt64 = 0
    public init(temperature: Float = 0, topP: Float = 1, seed: UInt64 = 0) {
        self.temperature = temperature
        self.topP = topP
        self.seed = seed
    }
}

struct Sampler {
    let config: SamplingConfig
    private var rng: UInt64

    init(_ config: SamplingConfig) throws {
        guard config.temperature >= 0 else { throw AutoGLMError("temperature must be >= 0, got \(config.temperature)") }
        guard config.topP > 0 && config.topP <= 1 else { throw AutoGLMError("top_p must be in (0, 1], got \(config.topP)") }
        self.config = config
        rng = config.seed
    }

    private mutating func nextDouble() -> Double {
        rng &+= 0x9E37_79B9_7F4A_7C15
        var z = rng
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return Double((z ^ (z >> 31)) >> 11) / Double(1 << 53)
    }

    mutating func sample(_ logits: ArraySlice<Float>) -> Int {
        let row = Array(logits)
        if config.temperature == 0 {
            var best = 0
            for i in 1..<row.count where row[i] > row[best] { best = i }  // first maximum, as argmax
            return best
        }
        let t = Double(config.temperature)
        let m = row.map { Double($0) / t }.max() ?? 0
        var probs = row.map { exp(Double($0) / t - m) }
        let total = probs.reduce(0, +)
        probs = probs.map { $0 / total }
        if config.topP < 1 {
            let order = probs.indices.sorted { probs[$0] > probs[$1] || (probs[$0] == probs[$1] && $0 < $1) }
            var kept = [Double](repeating: 0, count: probs.count)
            var cumulative = 0.0
            for i in order {
                cumulative += probs[i]
                kept[i] = probs[i]
                if cumulative >= Double(config.topP) { break }
            }
            let mass = kept.reduce(0, +)
            probs = kept.map { $0 / mass }
        }
        let u = nextDouble()
        var acc = 0.0
        var last = 0
        for (i, p) in probs.enumerated() where p > 0 {
            acc += p
            last = i
            if u < acc { return i }
        }
        return last
    }
}
