"""The prediction log, the one owner of its format: the record and file names (`record`), the
writer the API appends with (`writer`), the reader (`reader`), compaction and retention
(`retention`), the backup's consistent copy (`snapshot`) and the logged traffic joined with
its late labels (`traffic`)."""
