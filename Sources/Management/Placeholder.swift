import Hummingbird
import AsyncHTTPClient
import ManagementModel
enum ManagementPlaceholder {}
