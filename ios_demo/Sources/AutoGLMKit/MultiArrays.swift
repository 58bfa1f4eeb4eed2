import CoreML

/// Conversions between flat Swift arrays and the dtypes the packages declare (fp16, int32).
enum MultiArrays {
    static func float16(_ values: [Float], shape: [Int]) throws -> MLMultiArray {
        let a = try MLMultiArray(shape: shape.map { NSNumber(value: $0) }, dataType: .float16)
        a.withUnsafeMutableBufferPointer(ofType: Float16.self) { ptr, _ in
            for i in 0..<values.count { ptr[i] = Float16(values[i]) }
        }
        return a
    }

    static func int32(_ values: [Int], shape: [Int]) throws -> MLMultiArray {
        let a = try MLMultiArray(shape: shape.map { NSNumber(value: $0) }, dataType: .int32)
        a.withUnsafeMutableBufferPointer(ofType: Int32.self) { ptr, _ in
            for i in 0..<values.count { ptr[i] = Int32(values[i]) }
        }
        return a
    }

    /// Row-major Float values, whatever the array's dtype and strides.
    static func floats(_ a: MLMultiArray) -> [Float] {
        MLShapedArray<Float>(converting: a).scalars
    }

    static func shape(_ a: MLMultiArray) -> [Int] { a.shape.map { $0.intValue } }
}
