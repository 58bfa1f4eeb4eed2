import Accelerate
import Foundation

/// Mono PCM to the audio tower's input_features [1, mel_bins, frames] (runtime
/// preprocess/audio.py): resample to the manifest's rate, then Whisper log-mel (reflect-padded
/// centred frames, periodic Hann, power spectrum, Slaney mel filters to 8 kHz, log10, 80 dB range).
public struct AudioPreprocessor {
    public static let minRate = 8000, maxRate = 192000
    let spec: BundleManifest.AudioSpec
    let filters: [Double]  // [mel][freq] row-major
    let window: [Double]
    let fft: FFT

    public init(spec: BundleManifest.AudioSpec) {
        self.spec = spec
        filters = AudioPreprocessor.melFilters(mels: spec.numMelBins, nFFT: spec.nFFT, rate: spec.samplingRate)
        window = (0..<spec.nFFT).map { 0.5 - 0.5 * cos(2.0 * Double.pi * Double($0) / Double(spec.nFFT)) }
        fft = FFT(spec.nFFT)
    }

    public func preprocess(mono: [Float], sampleRate: Int) throws -> [Float] {
        guard !mono.isEmpty else { throw AutoGLMError("the recording contains no samples") }
        guard (AudioPreprocessor.minRate...AudioPreprocessor.maxRate).contains(sampleRate) else {
            throw AutoGLMError("sample rate \(sampleRate) Hz is outside the supported 8000-192000 Hz")
        }
        let x = sampleRate == spec.samplingRate ? mono : Resampler.resample(mono, from: sampleRate, to: spec.samplingRate)
        return logMel(x)
    }

    func logMel(_ audio: [Float]) -> [Float] {
        let nSamples = spec.numSamples, nFFT = spec.nFFT, pad = nFFT / 2
        var x = [Double](repeating: 0, count: nSamples + 2 * pad)
        for i in 0..<min(nSamples, audio.count) { x[pad + i] = Double(audio[i]) }
        for i in 1...pad {  // numpy "reflect": the edge sample is not repeated
            x[pad - i] = x[pad + i]
            x[pad + nSamples - 1 + i] = x[pad + nSamples - 1 - i]
        }
        let frames = spec.numFrames, bins = nFFT / 2 + 1, mels = spec.numMelBins
        var power = [Double](repeating: 0, count: bins * frames)  // [freq][frame]
        var re = [Double](repeating: 0, count: nFFT), im = [Double](repeating: 0, count: nFFT)
        for f in 0..<frames {
            let start = f * spec.hopLength
            for i in 0..<nFFT { re[i] = x[start + i] * window[i]; im[i] = 0 }
            fft.transform(&re, &im)
            for k in 0..<bins {
                // HF stores the STFT as complex64 before squaring in float64: keep that rounding.
                let r = Double(Float(re[k])), c = Double(Float(im[k]))
                power[k * frames + f] = r * r + c * c
            }
        }
        var mel = [Double](repeating: 0, count: mels * frames)
        vDSP_mmulD(filters, 1, power, 1, &mel, 1, vDSP_Length(mels), vDSP_Length(frames), vDSP_Length(bins))
        var logspec = mel.map { Float(log10(max(1e-10, $0))) }
        let floor = (logspec.max() ?? 0) - 8.0
        for i in 0..<logspec.count { logspec[i] = (max(logspec[i], floor) + 4.0) / 4.0 }
        return logspec
    }

    static func melFilters(mels: Int, nFFT: Int, rate: Int) -> [Double] {
        func hzToMel(_ f: Double) -> Double { f >= 1000 ? 15 + log(max(f, 1e-10) / 1000) * (27 / log(6.4)) : 3 * f / 200 }
        func melToHz(_ m: Double) -> Double { m >= 15 ? 1000 * exp(log(6.4) / 27 * (m - 15)) : 200 * m / 3 }
        let bins = nFFT / 2 + 1, lo = hzToMel(0), hi = hzToMel(8000)
        let hz = (0..<(mels + 2)).map { melToHz(lo + (hi - lo) * Double($0) / Double(mels + 1)) }
        var fb = [Double](repeating: 0, count: mels * bins)
        for k in 0..<bins {
            let freq = Double(rate / 2) * Double(k) / Double(bins - 1)
            for m in 0..<mels {
                let down = (freq - hz[m]) / (hz[m + 1] - hz[m]), up = (hz[m + 2] - freq) / (hz[m + 2] - hz[m + 1])
                fb[m * bins + k] = max(0, min(down, up)) * 2 / (hz[m + 2] - hz[m])
            }
        }
        return fb
    }
}
