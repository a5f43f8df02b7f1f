"""The dashboard's words in English and Vietnamese (``?lang=vi`` or the ``lang`` cookie)."""

from __future__ import annotations

from collections.abc import Callable

LANGS = ("en", "vi")

_VI: dict[str, str] = {
    "Fleet": "Đội thiết bị",
    "Alarms": "Cảnh báo",
    "Audit": "Nhật ký quản trị",
    "Sign in": "Đăng nhập",
    "Sign out": "Đăng xuất",
    "Name": "Tên",
    "Password": "Mật khẩu",
    "Code from the authenticator": "Mã từ ứng dụng xác thực",
    "Sign-in failed": "Đăng nhập không thành công",
    "online": "trực tuyến",
    "offline": "ngoại tuyến",
    "lost": "mất kết nối",
    "never seen": "chưa từng thấy",
    "Device": "Thiết bị",
    "State": "Trạng thái",
    "Version": "Phiên bản",
    "Configuration": "Cấu hình",
    "Health": "Tình trạng",
    "Last seen": "Lần cuối thấy",
    "Outbox": "Hàng đợi",
    "Site": "Điểm",
    "Group": "Nhóm",
    "Search": "Tìm",
    "Filter": "Lọc",
    "any": "tất cả",
    "Page": "Trang",
    "of": "trên",
    "devices": "thiết bị",
    "Previous": "Trước",
    "Next": "Sau",
    "Signature": "Chữ ký",
    "Health timeline": "Diễn biến tình trạng",
    "Enrollments per day": "Số lượt đăng ký mỗi ngày",
    "Recent events": "Sự kiện gần đây",
    "applied": "đã áp dụng",
    "desired": "mong muốn",
    "Send a command": "Gửi lệnh",
    "Command": "Lệnh",
    "Arguments (JSON)": "Tham số (JSON)",
    "Send": "Gửi",
    "Command sent": "Đã gửi lệnh",
    "Acknowledge": "Xác nhận",
    "acknowledged by": "đã xác nhận bởi",
    "Kind": "Loại",
    "Detail": "Chi tiết",
    "Raised": "Phát sinh",
    "Time": "Thời gian",
    "Who": "Người thực hiện",
    "Action": "Thao tác",
    "Target": "Đối tượng",
    "No open alarms": "Không có cảnh báo",
    "Jobs are not shown in this version": "Phiên bản này chưa hiển thị tác vụ",
    "ok": "tốt",
    "bad": "lỗi",
    "Type": "Loại",
    "Data": "Dữ liệu",
    "Times in UTC": "Thời gian theo UTC",
    "samples": "mẫu",
    "Open alarms": "Cảnh báo đang mở",
    "All alarms": "Tất cả cảnh báo",
    "lost after": "mất kết nối sau",
    "unhealthy": "thiết bị lỗi",
    "outbox_growing": "hàng đợi tăng",
    "package_rejected": "hồ sơ bị từ chối",
    "config_rolled_back": "cấu hình bị hoàn tác",
}


def translator(lang: str) -> Callable[[str], str]:
    if lang == "vi":
        return lambda s: _VI.get(s, s)
    return lambda s: s
