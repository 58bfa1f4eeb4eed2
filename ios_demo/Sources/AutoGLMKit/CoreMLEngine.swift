import CoreML

/// Engine over a Core ML bundle, calling the packages exactly as the Python runtime's
/// CoreMLBackend does (runtime/autoglm_runtime/backends/coreml_backend.py):
///
/// - iOS 18 (`kv_cache: state`): one MLState shared by `prefill` (a fixed chunk) and `decode` (one
///   token). A shorter last chunk is padded with zero rows (their keys land in slots a later call
///   overwrites before any query can see them; their logits are dropped); a chunk that would run
///   past max_context goes through `decode` token by token.
/// - iOS 17 (`kv_cache: explicit`): one function `main` for 1...prefill_chunk tokens; the cache is
///   passed whole as `key_cache` / `value_cache` and the returned `key_update` / `value_update` rows
///   are written at slots start ..< start + S here.
public final class CoreMLEngine: Engine {
    let manifest: BundleManifest
    let runner: CoreMLRunner
    private var state: DecoderState?
    private var keyCache: [Float] = []
    private var valueCache: [Float] = []

    public init(manifest: BundleManifest, runner: CoreMLRunner) throws {
        guard manifest.target == "coreml" else {
            throw AutoGLMError("\(manifest.root.path): a \(manifest.target) bundle, not a Core ML one (dist/ios)")
        }
        guard manifest.packages[ModelNames.componentTextDecoder] != nil else {
            throw AutoGLMError("\(manifest.root.path): manifest.json has no Core ML text_decoder package")
        }
        self.manifest = manifest
        self.runner = runner
        reset()
    }

    private func run(_ component: String, _ function: String, _ inputs: [String: MLMultiArray],
                     state: DecoderState? = nil) throws -> [String: MLMultiArray] {
        guard manifest.packages[component] != nil else {
            throw AutoGLMError("this bundle was exported without \(component)")
        }
        return try runner.predict(component: component, function: function, inputs: inputs, state: state)
    }

    private func output(_ out: [String: MLMultiArray], _ name: String) throws -> MLMultiArray {
        guard let a = out[name] else { throw AutoGLMError("the model returned no '\(name)'") }
        return a
    }

    public func visionEncoder(_ pixelValues: [Float]) throws -> [Float] {
        let x = try MultiArrays.float16(pixelValues, shape: [manifest.image.numPatches, manifest.image.patchDim])
        let out = try run(ModelNames.componentVisionEncoder, ModelNames.functionMain, [ModelNames.inputPixelValues: x])
        return MultiArrays.floats(try output(out, ModelNames.outputImageEmbeds))
    }

    public func audioEncoder(_ inputFeatures: [Float]) throws -> [Float] {
        guard let a = manifest.audio else { throw AutoGLMError("this model has no audio tower") }
        let x = try MultiArrays.float16(inputFeatures, shape: [1, a.numMelBins, a.numFrames])
        let out = try run(ModelNames.componentAudioEncoder, ModelNames.functionMain, [ModelNames.inputInputFeatures: x])
        return MultiArrays.floats(try output(out, ModelNames.outputAudioEmbeds))
    }

    public func tokenEmbedding(_ ids: [Int]) throws -> [Float] {
        var out: [Float] = []
        for start in stride(from: 0, to: ids.count, by: manifest.maxContext) {
            let chunk = Array(ids[start..<min(start + manifest.maxContext, ids.count)])
            let x = try MultiArrays.int32(chunk, shape: [1, chunk.count])
            let r = try run(ModelNames.componentTokenEmbedding, ModelNames.functionMain, [ModelNames.inputTokenIds: x])
            out += MultiArrays.floats(try output(r, ModelNames.outputEmbeds))
        }
        return out
    }

    public func textDecoder(_ embeds: [Float], start: Int, positionIds: [[Int]]) throws -> [Float] {
        let n = embeds.count / manifest.hiddenSize
        guard n > 0 else { throw AutoGLMError("text_decoder called with no tokens") }
        guard start + n <= manifest.maxContext else {
            throw AutoGLMError("cache positions up to \(start + n - 1) exceed the exported context of \(manifest.maxContext) tokens")
        }
        return manifest.kvCache == "state"
            ? try decodeWithState(embeds, n: n, start: start, positionIds: positionIds)
            : try decodeExplicit(embeds, n: n, start: start, positionIds: positionIds)
    }

    public func reset() {
        state = nil
        if manifest.kvCache != "state" {
            let count = manifest.cacheShape.reduce(1, *)
            keyCache = [Float](repeating: 0, count: count)
            valueCache = [Float](repeating: 0, count: count)
        }
    }

    /// fp16 [1, 1, rows, start + rows]: row i (cache slot start + i) sees slots 0 ... start + i.
    static func causalMask(start: Int, rows: Int) -> [Float] {
        let end = start + rows
        var m = [Float](repeating: 0, count: rows * end)
        for i in 0..<rows { for k in 0..<end where k > start + i { m[i * end + k] = -Float.infinity } }
        return m
    }

    private func columns(_ p: [[Int]], _ from: Int, _ to: Int) -> [Int] {
        (0..<3).flatMap { Array(p[$0][from..<to]) }
    }

    private func decodeWithState(_ embeds: [Float], n: Int, start: Int, positionIds: [[Int]]) throws -> [Float] {
        if state == nil {
            state = try runner.makeState(component: ModelNames.componentTextDecoder, function: ModelNames.functionDecode)
        }
        let c = manifest.prefillChunk, h = manifest.hiddenSize, v = manifest.vocabSize
        var logits: [Float] = []
        var i = 0
        while i < n {
            let left = n - i, pos = start + i
            if left == 1 || pos + c > manifest.maxContext || c == 1 {
                let rows = try callState(ModelNames.functionDecode, Array(embeds[(i * h)..<((i + 1) * h)]),
                                         columns(positionIds, i, i + 1), start: pos, rows: 1)
                logits += rows
                i += 1
                continue
            }
            let take = min(c, left)
            var e = [Float](repeating: 0, count: c * h)
            e.replaceSubrange(0..<(take * h), with: embeds[(i * h)..<((i + take) * h)])
            var p = [[Int]](repeating: [Int](repeating: 0, count: c), count: 3)
            for plane in 0..<3 {
                for k in 0..<take { p[plane][k] = positionIds[plane][i + k] }
                // Padding rows: any valid table index; their outputs are dropped.
                for k in take..<c { p[plane][k] = min(p[plane][take - 1] + (k - take + 1), manifest.maxContext - 1) }
            }
            let rows = try callState(ModelNames.functionPrefill, e, columns(p, 0, c), start: pos, rows: c)
            logits += rows[0..<(take * v)]
            i += take
        }
        return logits
    }

    private func callState(_ function: String, _ embeds: [Float], _ positions: [Int], start: Int, rows: Int) throws -> [Float] {
        let inputs: [String: MLMultiArray] = [
            ModelNames.inputInputsEmbeds: try MultiArrays.float16(embeds, shape: [1, rows, manifest.hiddenSize]),
            ModelNames.inputPositionIds: try MultiArrays.int32(positions, shape: [3, rows]),
            ModelNames.inputCausalMask: try MultiArrays.float16(CoreMLEngine.causalMask(start: start, rows: rows),
                                                                shape: [1, 1, rows, start + rows]),
        ]
        let out = try run(ModelNames.componentTextDecoder, function, inputs, state: state)
        return MultiArrays.floats(try output(out, ModelNames.outputLogits))
    }

    private func decodeExplicit(_ embeds: [Float], n: Int, start: Int, positionIds: [[Int]]) throws -> [Float] {
        let c = manifest.prefillChunk, h = manifest.hiddenSize
        let shape = manifest.cacheShape  // [layers, 1, kv_heads, max_context, head_dim]
        var logits: [Float] = []
        for i in stride(from: 0, to: n, by: c) {
            let s = min(c, n - i), pos = start + i
            let inputs: [String: MLMultiArray] = [
                ModelNames.inputInputsEmbeds: try MultiArrays.float16(Array(embeds[(i * h)..<((i + s) * h)]), shape: [1, s, h]),
                ModelNames.inputPositionIds: try MultiArrays.int32(columns(positionIds, i, i + s), shape: [3, s]),
                ModelNames.inputCausalMask: try MultiArrays.float16(CoreMLEngine.causalMask(start: pos, rows: s),
                                                                    shape: [1, 1, s, pos + s]),
                ModelNames.inputKeyCache: try MultiArrays.float16(keyCache, shape: shape),
                ModelNames.inputValueCache: try MultiArrays.float16(valueCache, shape: shape),
            ]
            let out = try run(ModelNames.componentTextDecoder, ModelNames.functionMain, inputs)
            write(MultiArrays.floats(try output(out, ModelNames.outputKeyUpdate)), into: &keyCache, at: pos, rows: s)
            write(MultiArrays.floats(try output(out, ModelNames.outputValueUpdate)), into: &valueCache, at: pos, rows: s)
            logits += MultiArrays.floats(try output(out, ModelNames.outputLogits))
        }
        return logits
    }

    /// Copies update [layers, 1, kv, rows, hd] into cache [layers, 1, kv, max_context, hd] at slot `at`.
    private func write(_ update: [Float], into cache: inout [Float], at: Int, rows: Int) {
        let s = manifest.cacheShape
        let (groups, ctx, hd) = (s[0] * s[1] * s[2], s[3], s[4])
        for g in 0..<groups {
            for r in 0..<rows {
                let src = (g * rows + r) * hd, dst = (g * ctx + at + r) * hd
                cache.replaceSubrange(dst..<(dst + hd), with: update[src..<(src + hd)])
            }
        }
    }
}
