// Shared tensor-level types for safetensors I/O. Reader, writer, formats and model code all use these.

export const DTYPES = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL"] as const;
export type DType = (typeof DTYPES)[number];

/** Bytes per element of each dtype. */
export const DTYPE_SIZE: Record<DType, number> = {
  F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1,
};

/** Where a tensor lives on disk. begin/end are absolute byte offsets in `file`. */
export interface TensorInfo {
  name: string;
  dtype: DType;
  shape: number[];
  file: string;
  begin: number;
  end: number;
}

/** A tensor handed to a writer. `data` is the raw little-endian bytes in `dtype`, or a typed array of that dtype. */
export interface TensorToWrite {
  name: string;
  dtype: DType;
  shape: number[];
  data: ArrayBufferView;
}

/** A tensor as read from a checkpoint: its raw little-endian bytes. */
export interface StoredTensor {
  dtype: DType;
  shape: number[];
  data: Uint8Array;
}
