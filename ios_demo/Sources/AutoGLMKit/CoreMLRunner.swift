import CoreML
import Foundation

/// A Core ML decoder state, opaque to the engine (an MLState on iOS 18).
public final class DecoderState {
    let value: Any?
    init(_ value: Any?) { self.value = value }
}

/// One prediction of one function of one package (its bundle-relative file: a decoder chain has
/// several): MLModelRunner with Core ML, a golden-trace replay in the tests.
public protocol CoreMLRunner: AnyObject {
    func predict(package: String, function: String, inputs: [String: MLMultiArray],
                 state: DecoderState?) throws -> [String: MLMultiArray]
    func makeState(package: String, function: String) throws -> DecoderState
}

/// Loads every package of a bundle with Core ML (each package of the decoder's chain too): compiled
/// once into the app's caches, one MLModel per function the engine calls (MLModelConfiguration.functionName
/// picks prefill / decode of the iOS 18 decoder; other image buckets' vision functions are not loaded).
public final class MLModelRunner: CoreMLRunner {
    private var models: [String: MLModel] = [:]

    public init(manifest: BundleManifest, computeUnits: MLComputeUnits = .all) async throws {
        var packages: [(file: String, functions: BundleManifest.Functions)] = manifest.packages
            .filter { $0.key != ModelNames.componentTextDecoder }.map { ($0.value.file, $0.value.functions) }
        packages += manifest.decoderChain.map { ($0.file, $0.functions) }
        for (file, functions) in packages {
            let compiled = try await MLModelRunner.compiled(manifest.url(file), size: manifest.files
                .filter { $0.key.hasPrefix(file + "/") }.values.reduce(0, +))
            for function in functions.keys where ModelNames.functionsCalled.contains(function) {
                let config = MLModelConfiguration()
                config.computeUnits = computeUnits
                if function != ModelNames.functionMain {
                    guard #available(iOS 18.0, macOS 15.0, *) else {
                        throw AutoGLMError("\(file) has function '\(function)': multifunction packages need iOS 18")
                    }
                    config.functionName = function
                }
                do {
                    models["\(file)/\(function)"] = try MLModel(contentsOf: compiled, configuration: config)
                } catch {
                    throw AutoGLMError("\(file): Core ML cannot load function '\(function)': \(error.localizedDescription)")
                }
            }
        }
    }

    /// The compiled .mlmodelc of a package, reused while the package keeps its size.
    static func compiled(_ package: URL, size: Int) async throws -> URL {
        let caches = try FileManager.default.url(for: .cachesDirectory, in: .userDomainMask, appropriateFor: nil, create: true)
        let dest = caches.appendingPathComponent("AutoGLMKit/\(package.deletingPathExtension().lastPathComponent)-\(size).mlmodelc")
        if FileManager.default.fileExists(atPath: dest.path) { return dest }
        let tmp: URL
        do {
            tmp = try await MLModel.compileModel(at: package)
        } catch {
            throw AutoGLMError("\(package.path): Core ML cannot compile this package: \(error.localizedDescription)")
        }
        try FileManager.default.createDirectory(at: dest.deletingLastPathComponent(), withIntermediateDirectories: true)
        try? FileManager.default.removeItem(at: dest)
        try FileManager.default.moveItem(at: tmp, to: dest)
        return dest
    }

    private func model(_ package: String, _ function: String) throws -> MLModel {
        guard let m = models["\(package)/\(function)"] else {
            throw AutoGLMError("the bundle has no \(package) function '\(function)'")
        }
        return m
    }

    public func predict(package: String, function: String, inputs: [String: MLMultiArray],
                        state: DecoderState?) throws -> [String: MLMultiArray] {
        let m = try model(package, function)
        let provider = try MLDictionaryFeatureProvider(dictionary: inputs.mapValues { MLFeatureValue(multiArray: $0) })
        let out: MLFeatureProvider
        if let s = state?.value {
            guard #available(iOS 18.0, macOS 15.0, *), let st = s as? MLState else {
                throw AutoGLMError("stateful decoding needs iOS 18")
            }
            out = try m.prediction(from: provider, using: st)
        } else {
            out = try m.prediction(from: provider)
        }
        var result: [String: MLMultiArray] = [:]
        for name in out.featureNames {
            if let a = out.featureValue(for: name)?.multiArrayValue { result[name] = a }
        }
        return result
    }

    public func makeState(package: String, function: String) throws -> DecoderState {
        guard #available(iOS 18.0, macOS 15.0, *) else { throw AutoGLMError("Core ML states need iOS 18") }
        return DecoderState(try model(package, function).makeState())
    }
}
